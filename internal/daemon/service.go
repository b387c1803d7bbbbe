// Package daemon is banger's VM service: the lifecycle of every VM, built
// as named steps that roll back in reverse; per-VM locks; the operation
// journal; image import; and reconciliation with the host at start-up.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/storage"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/system"
	"github.com/banger-vm/banger/internal/vmm"
)

// Defaults.
const (
	DefaultGracefulTimeout = 30 * time.Second
	DefaultKillTimeout     = 30 * time.Second
	DefaultImage           = "default"
	DefaultVCPUs           = 2
	DefaultMemoryMiB       = 1024
	MaxVCPUs               = 32 // Firecracker's limit; banger applies it to every driver
	MinMemoryMiB           = 64

	// recordTimeout bounds writes that must happen after a request is gone.
	recordTimeout = 10 * time.Second
)

// Config is what the daemon is wired with.
type Config struct {
	Layout     layout.Layout
	Drivers    vmm.Registry
	DefaultVMM string
	// DiskStrategy is the root disk strategy of VMs created without one:
	// auto (empty), qcow2, reflink, dm-snapshot or sparse-copy.
	DiskStrategy string
	// DiskBackend makes a strategy's backend; nil: storage.New.
	DiskBackend     func(storage.Kind, storage.Options) (storage.Backend, error)
	GuestCIDR       string
	GracefulTimeout time.Duration
	KillTimeout     time.Duration
	Logger          *slog.Logger
	// Network is the host network; nil: VMs get no network device.
	Network HostNetwork
	// GuestDNS are the resolvers written into guests.
	GuestDNS []netip.Addr
	// GuestUser is the account banger logs in as (images it builds have it).
	GuestUser string
	// Mirror is the Debian archive image builds use; empty: the builder's default.
	Mirror string
	// PackageCache keeps downloaded .debs between image builds; default
	// <state>/cache/apt.
	PackageCache string
	// ClientKey is banger's managed SSH public key (authorized_keys line)
	// written into guests; empty: guests get no identity.
	ClientKey string

	// Reliability (issue 9).
	// VMLogCap bounds each VM's log (console and VMM output, vm.log and
	// vm.log.1 together), in bytes; 0: no cap (tests without the banger
	// binary, whose log forwarder it runs).
	VMLogCap int64
	// MaxUserBuildBytes is the largest image a user other than root may
	// build; 0: DefaultMaxUserBuildBytes.
	MaxUserBuildBytes int64
	// Guest agent (issue 10): AgentBinary is the banger-agent image
	// builds install; empty: the daemon's own binary.
	AgentBinary string
}

// Service owns every VM and image. All methods are safe for concurrent use.
type Service struct {
	cfg    Config
	layout layout.Layout
	store  *store.Store
	log    *slog.Logger
	locks  *vmLocks
	pool   network.Pool
	caps   []capability
	probes probeCache
	agents agentConns // guest agent connections (issue 10)
	// tcgWarned: the slow-guest warning was logged (once per daemon).
	tcgWarned atomic.Bool
	// buildMu allows one image build at a time.
	buildMu sync.Mutex
	// signal sends signals to VMM processes; tests replace it.
	signal func(pid int, startTime uint64, sig syscall.Signal) error
	// disk: the host's storage, probed once (steps_disk.go).
	disk diskState
	// exits: VMM exit statuses for their watchers (watch.go).
	exits *exitBook
	// started: Begin's recovery, which WaitStarted waits for (begin.go).
	started atomic.Pointer[startGate]
}

// New wires a service onto an open store. It does not touch VMs: call
// Reconcile before serving requests.
func New(cfg Config, st *store.Store) (*Service, error) {
	if cfg.GracefulTimeout <= 0 {
		cfg.GracefulTimeout = DefaultGracefulTimeout
	}
	if cfg.KillTimeout <= 0 {
		cfg.KillTimeout = DefaultKillTimeout
	}
	var err error
	if cfg.DiskStrategy, err = checkDiskStrategy(cfg.DiskStrategy); err != nil {
		return nil, err
	}
	if cfg.GuestCIDR == "" {
		cfg.GuestCIDR = network.DefaultCIDR
	}
	if cfg.GuestUser == "" {
		cfg.GuestUser = "banger"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Drivers) == 0 {
		return nil, errors.New("no vmm driver configured")
	}
	if cfg.DefaultVMM == "" {
		cfg.DefaultVMM = AutoVMM
	}
	if _, ok := cfg.Drivers[cfg.DefaultVMM]; !ok && cfg.DefaultVMM != AutoVMM {
		return nil, errdefs.InvalidArgument("default vmm %q is not one of this daemon's drivers", cfg.DefaultVMM)
	}
	pool, err := network.NewPool(cfg.GuestCIDR)
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, layout: cfg.Layout, store: st, log: cfg.Logger, locks: newVMLocks(), pool: pool, caps: newCapabilities(cfg), signal: system.Signal, exits: newExitBook()}, nil
}

// Drivers returns what every configured driver reports about this host.
func (s *Service) Drivers(ctx context.Context) []vmm.Info {
	var out []vmm.Info
	for _, kind := range slices.Sorted(maps.Keys(s.cfg.Drivers)) {
		info := s.cfg.Drivers[kind].Probe(ctx)
		s.probes.remember(info)
		out = append(out, info)
	}
	return out
}

func (s *Service) DefaultVMM() string { return s.cfg.DefaultVMM }

func (s *Service) driver(kind string) (vmm.Driver, error) {
	d, ok := s.cfg.Drivers[kind]
	if !ok {
		return nil, errdefs.NotSupported("vmm %q is not available in this daemon", kind)
	}
	return d, nil
}

// nameRE is a DNS label: VM names become guest hostnames.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)

const maxNameLen = 63

// ValidateName checks a VM or image name.
func ValidateName(kind, name string) error {
	switch {
	case name == "":
		return errdefs.InvalidArgument("%s name is empty (hint: names are 1-%d lowercase letters, digits and inner hyphens)", kind, maxNameLen)
	case len(name) > maxNameLen:
		return errdefs.InvalidArgument("%s name %q is %d characters, over the limit of %d", kind, name, len(name), maxNameLen)
	case !nameRE.MatchString(name):
		return errdefs.InvalidArgument("%s name %q is not valid (hint: use lowercase letters, digits and inner hyphens, like \"web-1\")", kind, name)
	}
	return nil
}

// withVM resolves ref, takes the VM's lock, re-reads the record under it
// and runs fn. The record fn gets is current: nobody else can change it.
func (s *Service) withVM(ctx context.Context, ref string, fn func(v *model.VM) error) error {
	v, err := s.resolveVM(ctx, ref)
	if err != nil {
		return err
	}
	unlock, err := s.locks.lock(ctx, v.ID)
	if err != nil {
		return fmt.Errorf("waiting for vm %q: %w", v.Name, err)
	}
	defer unlock()
	v, err = s.store.GetVM(ctx, v.ID)
	if errors.Is(err, errdefs.ErrNotFound) {
		return errdefs.NotFound("vm %q was deleted meanwhile", ref)
	}
	if err != nil {
		return err
	}
	return fn(v)
}

func (s *Service) alive(v *model.VM) bool {
	return system.Alive(v.Runtime.PID, v.Runtime.PIDStartTime)
}

// GetVM returns the VM ref names, without locking.
func (s *Service) GetVM(ctx context.Context, ref string) (*model.VM, error) {
	return s.resolveVM(ctx, ref)
}

// ListVMs returns every VM the caller may see, with the listed fields only
// (one narrow query; ShowVM has the rest).
func (s *Service) ListVMs(ctx context.Context) ([]model.VMSummary, error) {
	vms, err := s.store.ListVMSummaries(ctx)
	return visibleVMs(ctx, vms), err
}

// Operations returns a VM's journal, newest first.
func (s *Service) Operations(ctx context.Context, ref string, limit int) ([]*model.Operation, error) {
	v, err := s.resolveVM(ctx, ref)
	if err != nil {
		return nil, err
	}
	return s.store.ListOperations(ctx, v.ID, limit)
}

// vmAttrs are the attributes every warning about a VM carries.
func vmAttrs(v *model.VM) []any {
	return []any{"vm", v.Name, "vm_id", v.ID, "state", string(v.State), "pid", v.Runtime.PID, "vmm", v.VMM, "log_path", v.LogPath}
}

func removeAllIn(parent, dir string) error {
	if dir == "" || dir == parent || !isUnder(parent, dir) {
		return fmt.Errorf("refusing to remove %q: not under %q", dir, parent)
	}
	return os.RemoveAll(dir)
}

// Layout is where the daemon keeps its files.
func (s *Service) Layout() layout.Layout { return s.layout }

// unsupported lists the features v's driver does not offer on this host,
// with the reason, so `vm show` says so instead of leaving a silent gap.
// It uses the driver's last probe.
func (s *Service) unsupported(ctx context.Context, v *model.VM) map[string]string {
	d, err := s.driver(v.VMM)
	if err != nil {
		return map[string]string{"vmm": err.Error()}
	}
	info := s.probes.get(ctx, d)
	out := map[string]string{}
	if !info.Features.Vsock {
		out["vsock"] = fmt.Sprintf("the %s driver offers no vsock device on this host", v.VMM)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
