package daemon

// Stage names the journal records besides the start steps (vm_start.go):
// dotted, stable, part of what `banger vm ops` shows.
const (
	StageAlreadyRunning  = "vm.already-running"
	StageDiskCreate      = "disk.create"
	StageDiskRemove      = "disk.remove"
	StageGuestIdentity   = "guest.identity"
	StageKillTimeout     = "kill.timeout"
	StageRecordDelete    = "record.delete"
	StageRuntimeCleanup  = "runtime.cleanup"
	StageRuntimeLeftover = "runtime.leftover"
	StageShutdownRequest = "shutdown.request"
	StageShutdownTimeout = "shutdown.timeout"
	StageShutdownWait    = "shutdown.wait"
	StageVMMChoose       = "vmm.choose"
	StageVMMExit         = "vmm.exit"
	StageVMMGone         = "vmm.gone"
	StageVMMKill         = "vmm.kill"
	StageVMMLeftover     = "vmm.leftover"
	StageVMMNotRunning   = "vmm.not-running"
	StageVMMSignal       = "vmm.signal"
)
