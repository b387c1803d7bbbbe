package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/banger-vm/banger/internal/identity"
)

// System is the guest's state the agent changes: the real one is
// HostSystem; tests inject a recorder.
type System interface {
	SetHostname(name string) error
	SetMachineID(id string) error
	// ConfigureNetwork gives the interface with n.MAC its address and
	// default route, and persists them where the guest's network manager
	// reads them (dns goes there too).
	ConfigureNetwork(n NetworkIdentity, dns []netip.Addr) error
	SetDNS(servers []netip.Addr) error
	// NewHostKeys replaces sshd's host keys with new ones, restarts sshd
	// if it runs, and returns the new public keys.
	NewHostKeys() ([]ssh.PublicKey, error)
	SetClock(t time.Time) error
	// AddEntropy adds data to the kernel's pool, crediting every bit.
	AddEntropy(data []byte) error
	Shutdown(reboot bool) error
	BootID() string
	// Sync makes what the methods above wrote durable: they write files
	// without flushing each (a flush costs a host fsync per file), and
	// the agent syncs once when a request has written them all.
	Sync() error
}

// HostSystem is the running guest: what cmd/banger-agent uses.
type HostSystem struct {
	Logger *slog.Logger
}

var _ System = HostSystem{}

func (h HostSystem) SetHostname(name string) error {
	if err := unix.Sethostname([]byte(name)); err != nil {
		return fmt.Errorf("sethostname: %w", err)
	}
	if err := writeFileAtomic("/etc/hostname", []byte(name+"\n"), 0o644); err != nil {
		return err
	}
	return h.fixHosts(name)
}

// fixHosts points 127.0.1.1 at the new name in /etc/hosts, so that the
// name resolves locally (sudo and others look it up).
func (h HostSystem) fixHosts(name string) error {
	old, err := os.ReadFile("/etc/hosts")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	var out []string
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "127.0.1.1" || l == "" && len(out) == 0 {
			continue
		}
		out = append(out, l)
	}
	out = append(out, "127.0.1.1\t"+name)
	return writeFileAtomic("/etc/hosts", []byte(strings.Join(out, "\n")+"\n"), 0o644)
}

func (h HostSystem) SetMachineID(id string) error {
	old, _ := os.ReadFile("/etc/machine-id")
	if err := writeFileAtomic("/etc/machine-id", []byte(id+"\n"), 0o444); err != nil {
		return err
	}
	linkJournal(h.Logger, journalDirs, strings.TrimSpace(string(old)), id)
	return nil
}

// journalDirs are where systemd-journald keeps a dir per machine ID.
var journalDirs = []string{"/var/log/journal", "/run/log/journal"}

// linkJournal makes the journal of machine ID old readable under the new
// one: a running journald (a restored guest's) keeps writing to the dir of
// the ID it started with, and journalctl reads the dir of the current ID.
// A later boot's journald then writes through the link into the same dir.
func linkJournal(logger *slog.Logger, dirs []string, old, id string) {
	if old == "" || old == id || !machineIDRE.MatchString(old) {
		return
	}
	for _, dir := range dirs {
		if fi, err := os.Stat(filepath.Join(dir, old)); err != nil || !fi.IsDir() {
			continue
		}
		if err := os.Symlink(old, filepath.Join(dir, id)); err != nil && !errors.Is(err, os.ErrExist) {
			logger.Warn("journal of the old machine id not linked", "dir", dir, "err", err)
		}
	}
}

func (h HostSystem) ConfigureNetwork(n NetworkIdentity, dns []netip.Addr) error {
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return err
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var link netlink.Link
	for _, l := range links {
		if bytes.Equal(l.Attrs().HardwareAddr, mac) {
			link = l
			break
		}
	}
	if link == nil {
		return fmt.Errorf("no interface with mac %s", mac)
	}
	if n.NewMAC != "" {
		newMAC, err := net.ParseMAC(n.NewMAC)
		if err != nil {
			return err
		}
		macAt := time.Now()
		if err := setMAC(link, newMAC); err != nil {
			return err
		}
		mac = newMAC
		// systemd-networkd sees the new MAC, finds that no .network file
		// matches it and lets the link go, removing what it had
		// configured. That must be over before the new address is given:
		// it could be the same (a fork given its template's IP).
		waited := time.Now()
		h.waitNetworkdLetGo(link.Attrs().Index)
		h.Logger.Info("identity: new mac set; systemd-networkd let go of the link", "mac_ms", waited.Sub(macAt).Milliseconds(), "networkd_ms", time.Since(waited).Milliseconds())
	}
	// networkd's removals may still be in flight: the address and route
	// are checked a moment after they are given, and given again if gone.
	for attempt := 0; ; attempt++ {
		if err := assignAddress(link, n); err != nil {
			return err
		}
		time.Sleep(15 * time.Millisecond)
		if ok, err := hasAddress(link, n); err != nil || ok || attempt == 5 {
			if err == nil && !ok {
				err = fmt.Errorf("%s: address %s or its default route was removed as soon as it was given", link.Attrs().Name, n.Address)
			}
			if err != nil {
				return err
			}
			break
		}
	}
	// Persist for systemd-networkd, where the image has it, so a reboot
	// keeps the new address.
	if fi, err := os.Stat(filepath.Dir(identity.NetworkFile)); err == nil && fi.IsDir() {
		cfg := identity.NetworkConfig(identity.Identity{MAC: mac, Address: n.Address, Gateway: n.Gateway, DNS: dns})
		if err := writeFileAtomic(identity.NetworkFile, cfg, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (HostSystem) SetDNS(servers []netip.Addr) error {
	var b strings.Builder
	b.WriteString("# Written by banger's guest agent.\n")
	for _, a := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	// A symlink (systemd-resolved's stub) is replaced by a file: the
	// address given is what the guest must use.
	return writeFileAtomic("/etc/resolv.conf", []byte(b.String()), 0o644)
}

func (h HostSystem) NewHostKeys() ([]ssh.PublicKey, error) {
	keys, err := identity.NewHostKeys()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll("/etc/ssh", 0o755); err != nil {
		return nil, err
	}
	// Old keys go: a host that pinned them must not find them again.
	old, _ := filepath.Glob("/etc/ssh/ssh_host_*_key*")
	for _, f := range old {
		if err := os.Remove(f); err != nil {
			return nil, err
		}
	}
	for _, k := range keys {
		p := filepath.Join("/etc/ssh", k.File)
		if err := writeFileAtomic(p, k.Private, 0o600); err != nil {
			return nil, err
		}
		if err := writeFileAtomic(p+".pub", k.PublicFile(), 0o644); err != nil {
			return nil, err
		}
	}
	h.restartSSHD()
	return keys.PublicKeys(), nil
}

// restartSSHD makes a running sshd use the new host keys. By default
// sshd re-executes itself for every connection, and the new process reads
// the host keys from disk: the next connection already gets the new keys,
// and nothing is restarted (a restart costs seconds on a slow guest and
// refuses connections meanwhile). Only an sshd run with -r (no re-exec)
// holds its keys: systemd restarts it; otherwise SIGHUP makes it
// re-execute itself.
func (h HostSystem) restartSSHD() {
	pids := pidsOf("sshd")
	held := false
	for _, pid := range pids {
		held = held || noReexec(pid)
	}
	if !held {
		return
	}
	if isSystemd() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, "systemctl", "try-restart", "ssh.service", "sshd.service").CombinedOutput()
		if err != nil {
			h.Logger.Warn("restart sshd", "err", err, "output", strings.TrimSpace(string(out)))
		}
		return
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGHUP); err != nil {
			h.Logger.Warn("signal sshd", "pid", pid, "err", err)
		}
	}
}

// noReexec reports whether sshd process pid was started with -r: it does
// not re-execute itself per connection, so it keeps the host keys it read
// at start.
func noReexec(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	return err == nil && noReexecCmdline(b)
}

// noReexecCmdline reports whether a /proc cmdline has sshd's -r option.
func noReexecCmdline(b []byte) bool {
	// sshd rewrites its process title into one string holding its
	// arguments ("sshd: /usr/sbin/sshd -D [listener] ..."): split on spaces too.
	for _, arg := range strings.FieldsFunc(string(b), func(r rune) bool { return r == 0 || r == ' ' }) {
		if len(arg) > 1 && arg[0] == '-' && arg[1] != '-' && !strings.ContainsAny(arg, "=/") && strings.Contains(arg, "r") {
			return true
		}
	}
	return false
}

// pidsOf returns the processes whose command name is comm, other than
// children of another one (sshd's per-connection processes).
func pidsOf(comm string) []int {
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		s := string(stat)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open || s[open+1:end] != comm {
			continue
		}
		f := strings.Fields(s[end+1:])
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		if pc, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(ppid), "comm")); err == nil && strings.TrimSpace(string(pc)) == comm {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

func (HostSystem) SetClock(t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
		return fmt.Errorf("clock_settime: %w", err)
	}
	return nil
}

func (HostSystem) AddEntropy(data []byte) error {
	f, err := os.OpenFile("/dev/random", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	buf := make([]byte, 8+len(data)+3)
	ne := binary.NativeEndian
	ne.PutUint32(buf[0:], uint32(len(data)*8))
	ne.PutUint32(buf[4:], uint32(len(data)))
	copy(buf[8:], data)
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&buf[0])))
		if e != 0 {
			ioErr = fmt.Errorf("ioctl RNDADDENTROPY: %w", e)
			return
		}
		// An initialised kernel only mixes new entropy into its input
		// pool; its CRNG, which getrandom reads, is reseeded on a
		// schedule. A restored guest must not wait for it: every fork of
		// one snapshot wakes with the same CRNG state, and would make the
		// same keys.
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.RNDRESEEDCRNG, 0); e != 0 {
			ioErr = fmt.Errorf("ioctl RNDRESEEDCRNG: %w", e)
		}
	}); err != nil {
		return err
	}
	return ioErr
}

// Shutdown powers off or reboots cleanly: through systemd when it is
// init, through the system's poweroff/reboot (busybox and sysvinit signal
// their init) otherwise, and by syncing and calling reboot(2) as a last
// resort.
func (h HostSystem) Shutdown(reboot bool) error {
	verb, cmd := "poweroff", unix.LINUX_REBOOT_CMD_POWER_OFF
	if reboot {
		verb, cmd = "reboot", unix.LINUX_REBOOT_CMD_RESTART
	}
	var argv []string
	if isSystemd() {
		argv = []string{"systemctl", verb}
	} else if p, err := exec.LookPath(verb); err == nil {
		argv = []string{p}
	}
	if argv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
		if err == nil {
			return nil
		}
		h.Logger.Warn("clean shutdown failed, forcing", "cmd", argv, "err", err, "output", strings.TrimSpace(string(out)))
	}
	unix.Sync()
	return unix.Reboot(cmd)
}

func (HostSystem) BootID() string {
	b, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return strings.TrimSpace(string(b))
}

func isSystemd() bool {
	fi, err := os.Stat("/run/systemd/system")
	return err == nil && fi.IsDir()
}

// writeFileAtomic replaces path with data and mode through a temporary
// file in the same directory.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error { // durable after Sync
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err1 := f.Write(data)
	err2 := f.Chmod(mode)
	err3 := f.Close()
	if err := errors.Join(err1, err2, err3); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// NetworkdLinks is where systemd-networkd publishes each link's state.
const NetworkdLinks = "/run/systemd/netif/links"

// networkdWait bounds the wait for systemd-networkd to let go of a link.
const networkdWait = 3 * time.Second

// setMAC gives link a new MAC: down, changed, up again. Down and up are
// what make systemd-networkd look at the link anew (systemd 252 does not
// on a MAC changed while the link is up, which virtio-net allows), find
// that no .network file matches the new MAC and let the link go.
func setMAC(link netlink.Link, mac net.HardwareAddr) error {
	name := link.Attrs().Name
	if err := netlink.LinkSetDown(link); err != nil {
		return fmt.Errorf("%s down: %w", name, err)
	}
	if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
		return fmt.Errorf("%s set mac: %w", name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

// waitNetworkdLetGo waits until systemd-networkd, if it manages the link
// with index ifindex, has noticed that the link's new MAC matches none of
// its .network files and stopped managing it: it then removes the
// addresses and routes it had configured, and would remove the same
// address given anew (a fork given its template's IP) if it did so after
// the agent configured it.
func (h HostSystem) waitNetworkdLetGo(ifindex int) {
	state := filepath.Join(NetworkdLinks, strconv.Itoa(ifindex))
	deadline := time.Now().Add(networkdWait)
	for {
		b, err := os.ReadFile(state)
		if err != nil || !ManagedByNetworkd(b) {
			return
		}
		if time.Now().After(deadline) {
			h.Logger.Warn("systemd-networkd still manages the link after its mac changed", "ifindex", ifindex)
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// ManagedByNetworkd reports whether a networkd link state file says the
// link is configured (or being configured) by it.
func ManagedByNetworkd(state []byte) bool {
	for _, l := range strings.Split(string(state), "\n") {
		if v, ok := strings.CutPrefix(l, "ADMIN_STATE="); ok {
			return v == "configured" || v == "configuring" || v == "pending" || v == "initialized"
		}
	}
	return false
}

// assignAddress gives link n's address (and no other global one), brings
// it up and routes the default via n's gateway.
func assignAddress(link netlink.Link, n NetworkIdentity) error {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("%s addresses: %w", link.Attrs().Name, err)
	}
	want := n.Address.Addr().AsSlice()
	for _, a := range addrs {
		if a.IP.IsLinkLocalUnicast() || a.IP.Equal(want) {
			continue
		}
		if err := netlink.AddrDel(link, &a); err != nil {
			return fmt.Errorf("%s remove %s: %w", link.Attrs().Name, a.IPNet, err)
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: want, Mask: net.CIDRMask(n.Address.Bits(), n.Address.Addr().BitLen())}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("%s add %s: %w", link.Attrs().Name, n.Address, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("%s up: %w", link.Attrs().Name, err)
	}
	if n.Gateway.IsValid() {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: n.Gateway.AsSlice()}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", n.Gateway, err)
		}
	}
	return nil
}

// hasAddress reports whether link has n's address and, if n has a
// gateway, a default route through it.
func hasAddress(link netlink.Link, n NetworkIdentity) (bool, error) {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	found := false
	for _, a := range addrs {
		found = found || a.IP.Equal(n.Address.Addr().AsSlice())
	}
	if !found || !n.Gateway.IsValid() {
		return found, nil
	}
	routes, err := netlink.RouteList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, err
	}
	for _, r := range routes {
		if r.Gw.Equal(n.Gateway.AsSlice()) && (r.Dst == nil || r.Dst.IP.IsUnspecified()) {
			return true, nil
		}
	}
	return false, nil
}

// Sync flushes the root filesystem once (syncfs), making every file the
// agent wrote durable.
func (HostSystem) Sync() error {
	f, err := os.Open("/")
	if err != nil {
		return err
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("syncfs /: %w", err)
	}
	return nil
}
