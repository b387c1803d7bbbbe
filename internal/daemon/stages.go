package daemon

// Stage names: what the journal records and `banger vm ops` shows. The
// names the seed gave are kept (snake_case); banger's own are dotted.

// Steps of vm.create (buildCreateSteps), in order.
const (
	StepRecord        = "vm.record"
	StepVMMValidate   = "vmm.validate"
	StepDiskCreate    = "disk.create"
	StepGuestIdentity = "guest.identity"
	StepRecordStopped = "vm.record-stopped"
)

// Steps of vm.start (buildStartSteps), in order; capabilities add
// "cap.<name>" steps before StepRecordRunning.
const (
	StepImageCheck          = "image.check"
	StepDiskAttach          = "disk.attach"
	StepCleanupStaleRuntime = "cleanup_stale_runtime"
	StepNetworkTap          = "network.tap"
	StepNetworkPolicy       = "network.policy"
	StepVMMLaunch           = "vmm.launch"
	StepVMMBoot             = "vmm.boot"
	StepRecordRunning       = "vm.record-running"
)

// Releases run by a teardown (derived from the start steps), besides those
// journalled under their step's name.
const (
	StageKillRunningVM  = "kill_running_vm" // release of StepVMMLaunch
	StageVMMCleanup     = "vmm.cleanup"     // release of StepCleanupStaleRuntime: the driver's files
	StageCleanupRuntime = "cleanup_runtime" // the whole teardown, recorded
)

// Stop and kill.
const (
	StageGracefulShutdown        = "graceful_shutdown"
	StageWaitForExit             = "wait_for_exit"
	StageGracefulShutdownTimeout = "graceful_shutdown_timeout"
	StageForce                   = "force"
	StageSendSignal              = "send_signal"
	StageSignalTimeout           = "signal_timeout"
)

// Steps of vm.delete (buildDeleteSteps), in order.
const (
	StepDiskRemove        = "disk.remove"
	StepDeleteStoreRecord = "delete_store_record"
	StepDeleteVMDir       = "delete_vm_dir"
)

// Notes: observations, not steps.
const (
	StageAlreadyRunning  = "vm.already-running"
	StageRuntimeLeftover = "runtime.leftover"
	StageVMMChoose       = "vmm.choose"
	StageVMMGone         = "vmm.gone"
	StageVMMLeftover     = "vmm.leftover"
	StageVMMNotRunning   = "vmm.not-running"
	StageVMReadopted     = "vm.readopted"
	StageCreateDiscarded = "vm.create-discarded"
	StageNetPolicySet    = "network.policy-set"
)
