package identity

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
)

// DefaultUser is the guest account banger logs in as.
const DefaultUser = "banger"

// NetworkFile is where ApplyIdentity writes the guest's systemd-networkd
// configuration.
const NetworkFile = "/etc/systemd/network/10-banger.network"

// Identity is what makes a guest this VM: written onto its root disk before
// the first boot by ApplyIdentity.
type Identity struct {
	Hostname  string           // the VM name, a DNS label
	MachineID string           // 32 lowercase hex digits (NewMachineID)
	MAC       net.HardwareAddr // the VM NIC's MAC; empty matches any Ethernet link
	Address   netip.Prefix     // the guest's address and the network's length, e.g. 172.30.0.2/24
	Gateway   netip.Addr       // optional
	DNS       []netip.Addr
	User      string // the account whose authorized_keys gets AuthorizedKey
	// AuthorizedKey is banger's managed public key, one authorized_keys line.
	AuthorizedKey string
	HostKeys      HostKeys
	// HostKeysFromAgent: the guest's host keys are made by its agent at
	// run time (a fork), so HostKeys is empty and nothing replaces the
	// keys on the guest's disk.
	HostKeysFromAgent bool
}

var (
	hostnameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	machineIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)
	userRE      = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
	hostKeyRE   = regexp.MustCompile(`^ssh_host_[a-z0-9]+_key$`)
)

func (id Identity) validate() error {
	bad := func(format string, args ...any) error {
		return errdefs.InvalidArgument("guest identity: "+format, args...)
	}
	switch {
	case !hostnameRE.MatchString(id.Hostname):
		return bad("hostname %q is not a DNS label", id.Hostname)
	case !machineIDRE.MatchString(id.MachineID) || id.MachineID == strings.Repeat("0", 32):
		return bad("machine id %q is not 32 lowercase hex digits", id.MachineID)
	case len(id.MAC) != 0 && len(id.MAC) != 6:
		return bad("MAC %q is not an Ethernet address", id.MAC)
	case !id.Address.IsValid() || id.Address.Addr().Zone() != "" || id.Address.Addr().Is4In6():
		return bad("address %q is not an IP prefix like 172.30.0.2/24", id.Address)
	case id.Gateway.IsValid() && (id.Gateway.Is4() != id.Address.Addr().Is4() || id.Gateway.Zone() != ""):
		return bad("gateway %s is not of the address's family", id.Gateway)
	case !userRE.MatchString(id.User):
		return bad("user %q is not a valid account name", id.User)
	case len(id.HostKeys) == 0 && !id.HostKeysFromAgent:
		return bad("no host keys")
	case len(id.HostKeys) > 0 && id.HostKeysFromAgent:
		return bad("host keys given, but the agent is to make them")
	}
	for _, a := range id.DNS {
		if !a.IsValid() || a.Zone() != "" {
			return bad("DNS server %q is not an IP address", a)
		}
	}
	line := strings.TrimSpace(id.AuthorizedKey)
	if strings.ContainsAny(line, "\r\n") {
		return bad("authorized key is more than one line")
	}
	if _, _, _, rest, err := ssh.ParseAuthorizedKey([]byte(line)); err != nil || len(rest) != 0 {
		return bad("authorized key %q does not parse", line)
	}
	for _, k := range id.HostKeys {
		if !hostKeyRE.MatchString(k.File) {
			return bad("host key file name %q is not ssh_host_<type>_key", k.File)
		}
		signer, err := ssh.ParsePrivateKey(k.Private)
		if err != nil {
			return bad("host key %s does not parse: %v", k.File, err)
		}
		if k.Public == nil || !bytes.Equal(signer.PublicKey().Marshal(), k.Public.Marshal()) {
			return bad("host key %s: public key does not belong to the private key", k.File)
		}
	}
	return nil
}

// ApplyIdentity writes id (the list Files makes) onto the raw ext4 root
// disk at diskPath, for images whose initramfs does not apply config disks
// (see WriteConfigDisk for those that do). diskPath must
// not be in use (banger does this before a VM's first boot). It does not
// mount the image: it drives debugfs, see debugfs for how the command
// stream is kept safe. It writes /etc/hostname, /etc/hosts (the
// 127.0.1.1 line), /etc/machine-id, NetworkFile, /etc/resolv.conf (a
// regular file, replacing a symlink), the user's ~/.ssh/authorized_keys
// (0600, owned by the user as /etc/passwd in the image says) and the host
// keys in /etc/ssh, removing every other ssh_host_* file. Existing files
// are replaced, missing directories made. The result is read back.
//
// The files debugfs reads and writes, the VM's private host keys among
// them, go in a private directory made under workDir (an existing
// directory; empty means os.TempDir(), for tests) and removed on return.
// Give it the VM's own directory, so that a crash leaves them there, not
// in /tmp.
func ApplyIdentity(ctx context.Context, diskPath, workDir string, id Identity) (err error) {
	if err := id.validate(); err != nil {
		return err
	}
	if err := checkExtImage(diskPath); err != nil {
		return err
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		return errdefs.FailedPrecondition("write guest identity: debugfs is not installed (hint: apt-get install e2fsprogs)")
	}
	work, err := os.MkdirTemp(workDir, "banger-identity-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, removeWork(work)) }()
	d, err := newDebugfs(diskPath, work)
	if err != nil {
		return err
	}
	v := newImageView(d)
	fail := func(err error) error {
		return fmt.Errorf("write identity of vm %q onto %s: %w", id.Hostname, diskPath, err)
	}

	u, err := v.user(ctx, id.User)
	if err != nil {
		return fail(err)
	}
	hosts, err := v.readFile(ctx, "/etc/hosts")
	if err != nil {
		return fail(err)
	}

	p := &planner{v: v, work: work}
	if err := p.removeHostKeys(ctx); err != nil {
		return fail(err)
	}
	for _, f := range files(id, u, hosts) {
		perm := uint32(f.Mode.Perm())
		if f.Mode.IsDir() {
			err = p.dir(ctx, f.Path, perm, f.UID, f.GID, !f.Keep)
		} else {
			err = p.file(ctx, f.Path, f.Data, perm, f.UID, f.GID)
		}
		if err != nil {
			return fail(err)
		}
	}
	if _, err := d.run(ctx, true, p.cmds); err != nil {
		return fail(err)
	}
	if err := p.verify(ctx); err != nil {
		return fail(err)
	}
	return nil
}

// CanApplyIdentity reports whether ApplyIdentity can personalise the image
// at diskPath for user: an ext2/3/4 file system with an /etc/passwd naming
// the user and a home directory banger can write. When it cannot (an
// imported image of another kind), the reason says why and banger falls
// back to trusting the guest's host key on first use. Its temporary files
// go under workDir, as ApplyIdentity's.
func CanApplyIdentity(ctx context.Context, diskPath, workDir, user string) (_ bool, why string) {
	if !userRE.MatchString(user) {
		return false, fmt.Sprintf("user %q is not a valid account name", user)
	}
	if err := checkExtImage(diskPath); err != nil {
		return false, err.Error()
	}
	if _, err := exec.LookPath("debugfs"); err != nil {
		return false, "debugfs (e2fsprogs) is not installed"
	}
	work, err := os.MkdirTemp(workDir, "banger-identity-")
	if err != nil {
		return false, err.Error()
	}
	defer func() {
		if err := removeWork(work); err != nil {
			why += " (" + err.Error() + ")"
		}
	}()
	d, err := newDebugfs(diskPath, work)
	if err != nil {
		return false, err.Error()
	}
	if _, err := newImageView(d).user(ctx, user); err != nil {
		return false, err.Error()
	}
	return true, ""
}

// ext superblock: at byte 1024; magic at 0x38, incompatible features at 0x60.
const (
	extSuperblock     = 1024
	extMagic          = 0xef53
	extIncompatRecov  = 0x4 // the journal needs recovery
	extIncompatJrnDev = 0x8 // an external journal device, not a file system
)

// checkExtImage refuses what debugfs should not write: a file that is not
// an ext2/3/4 file system, and one whose journal needs recovery (it was in
// use, or not cleanly unmounted: writing past the journal would corrupt it).
func checkExtImage(diskPath string) error {
	f, err := os.Open(diskPath)
	if err != nil {
		return err
	}
	defer f.Close()
	sb := make([]byte, 0x64)
	if _, err := f.ReadAt(sb, extSuperblock); err != nil {
		if errors.Is(err, io.EOF) {
			return errdefs.FailedPrecondition("%s is not an ext4 image: too small", diskPath)
		}
		return err
	}
	incompat := binary.LittleEndian.Uint32(sb[0x60:])
	switch {
	case binary.LittleEndian.Uint16(sb[0x38:]) != extMagic:
		return errdefs.FailedPrecondition("%s is not an ext4 image", diskPath)
	case incompat&extIncompatJrnDev != 0:
		return errdefs.FailedPrecondition("%s is an ext4 journal device, not a file system", diskPath)
	case incompat&extIncompatRecov != 0:
		return errdefs.FailedPrecondition("%s has a journal that needs recovery: it is in use or was not cleanly unmounted (hint: if nothing uses it, run e2fsck -fy %s)", diskPath, diskPath)
	}
	return nil
}

// imageView is what banger has learnt of the image's directories, with the
// changes planned so far.
type imageView struct {
	d       *debugfs
	lists   map[string]map[string]dirent // directory -> entries
	created map[string]bool              // directories the plan makes
}

func newImageView(d *debugfs) *imageView {
	return &imageView{d: d, lists: map[string]map[string]dirent{}, created: map[string]bool{}}
}

var rootDir = dirent{name: "/", mode: sIFDIR | 0o755}

// lookup returns the entry at p (not following a final symlink). A
// directory on the way that is not a real directory (a symlink included)
// is an error: banger does not write through links.
func (v *imageView) lookup(ctx context.Context, p string) (dirent, bool, error) {
	if err := safePath(p); err != nil {
		return dirent{}, false, err
	}
	if p == "/" {
		return rootDir, true, nil
	}
	entries, ok, err := v.list(ctx, path.Dir(p))
	if err != nil || !ok {
		return dirent{}, false, err
	}
	e, ok := entries[path.Base(p)]
	return e, ok, nil
}

// list returns the entries of directory dir; false when it does not exist.
func (v *imageView) list(ctx context.Context, dir string) (map[string]dirent, bool, error) {
	if entries, ok := v.lists[dir]; ok {
		return entries, true, nil
	}
	if v.created[dir] {
		v.lists[dir] = map[string]dirent{}
		return v.lists[dir], true, nil
	}
	e, ok, err := v.lookup(ctx, dir)
	if err != nil || !ok {
		return nil, false, err
	}
	if !e.isDir() {
		return nil, false, errdefs.FailedPrecondition("%s in the image is %s, not a directory", dir, kindOf(e))
	}
	entries, err := v.d.ls(ctx, dir)
	if err != nil {
		return nil, false, err
	}
	v.lists[dir] = entries
	return entries, true, nil
}

func kindOf(e dirent) string {
	switch e.mode & sIFMT {
	case sIFDIR:
		return "a directory"
	case sIFREG:
		return "a file"
	case sIFLNK:
		return "a symlink"
	}
	return fmt.Sprintf("a special file (mode %o)", e.mode)
}

// readFile returns the content of the regular file p, nil if there is none
// (absent, or not a regular file).
func (v *imageView) readFile(ctx context.Context, p string) ([]byte, error) {
	e, ok, err := v.lookup(ctx, p)
	if err != nil || !ok || e.mode&sIFMT != sIFREG {
		return nil, err
	}
	out := "read-" + path.Base(p)
	if _, err := v.d.run(ctx, false, []string{"dump " + p + " " + out}); err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(v.d.dir, out))
}

type account struct {
	name     string
	uid, gid uint32
	home     string
}

// user finds name in the image's /etc/passwd.
func (v *imageView) user(ctx context.Context, name string) (account, error) {
	passwd, err := v.readFile(ctx, "/etc/passwd")
	if err != nil {
		return account{}, err
	}
	if passwd == nil {
		return account{}, errdefs.FailedPrecondition("the image has no /etc/passwd")
	}
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) != 7 || f[0] != name {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 32)
		gid, err2 := strconv.ParseUint(f[3], 10, 32)
		if err1 != nil || err2 != nil {
			return account{}, errdefs.FailedPrecondition("user %q in the image's /etc/passwd has a bad uid or gid", name)
		}
		if safePath(f[5]) != nil || f[5] == "/" {
			return account{}, errdefs.FailedPrecondition("home directory %q of user %q in the image is not a path banger writes", f[5], name)
		}
		return account{name: name, uid: uint32(uid), gid: uint32(gid), home: f[5]}, nil
	}
	return account{}, errdefs.FailedPrecondition("the image's /etc/passwd has no user %q", name)
}

// planner accumulates the debugfs commands of one write session, checking
// each against the image first so that every command must succeed.
type planner struct {
	v     *imageView
	work  string
	cmds  []string
	n     int
	files []plannedFile
}

type plannedFile struct {
	path     string
	data     []byte
	mode     uint32
	uid, gid uint32
	isDir    bool
}

func (p *planner) sif(target string, mode, uid, gid uint32) {
	p.cmds = append(p.cmds,
		fmt.Sprintf("sif %s mode 0%o", target, mode),
		fmt.Sprintf("sif %s uid %d", target, uid),
		fmt.Sprintf("sif %s gid %d", target, gid))
}

// dir makes directory d if missing (its parent must exist or be planned).
// An existing directory is kept; with fix its mode and owner are set.
func (p *planner) dir(ctx context.Context, d string, mode, uid, gid uint32, fix bool) error {
	if err := safePath(d); err != nil {
		return err
	}
	entries, ok, err := p.v.list(ctx, path.Dir(d))
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.FailedPrecondition("directory %s is missing from the image", path.Dir(d))
	}
	e, ok := entries[path.Base(d)]
	if ok && !e.isDir() {
		return errdefs.FailedPrecondition("%s in the image is %s, not a directory", d, kindOf(e))
	}
	if !ok {
		p.cmds = append(p.cmds, "mkdir "+d)
		p.v.created[d] = true
		entries[path.Base(d)] = dirent{name: path.Base(d), mode: sIFDIR | mode, uid: uid, gid: gid}
	}
	if !ok || fix {
		p.sif(d, sIFDIR|mode, uid, gid)
		p.files = append(p.files, plannedFile{path: d, mode: sIFDIR | mode, uid: uid, gid: gid, isDir: true})
	}
	return nil
}

// file writes data to f as a regular file, replacing a file or symlink
// there. Its directory must exist or be planned.
func (p *planner) file(ctx context.Context, f string, data []byte, mode, uid, gid uint32) error {
	if err := safePath(f); err != nil {
		return err
	}
	dir := path.Dir(f)
	entries, ok, err := p.v.list(ctx, dir)
	if err != nil {
		return err
	}
	if !ok {
		return errdefs.FailedPrecondition("directory %s is missing from the image", dir)
	}
	if e, ok := entries[path.Base(f)]; ok {
		if e.isDir() {
			return errdefs.FailedPrecondition("%s in the image is a directory", f)
		}
		p.remove(f)
	}
	src := fmt.Sprintf("c%d", p.n)
	p.n++
	if err := os.WriteFile(filepath.Join(p.work, src), data, 0o600); err != nil {
		return err
	}
	p.cmds = append(p.cmds, "cd "+dir, "write "+src+" "+path.Base(f), "cd /")
	p.sif(f, sIFREG|mode, uid, gid)
	entries[path.Base(f)] = dirent{name: path.Base(f), mode: sIFREG | mode, uid: uid, gid: gid}
	p.files = append(p.files, plannedFile{path: f, data: data, mode: sIFREG | mode, uid: uid, gid: gid})
	return nil
}

// remove unlinks the non-directory f (known to exist).
func (p *planner) remove(f string) {
	p.cmds = append(p.cmds, "rm "+f)
	delete(p.v.lists[path.Dir(f)], path.Base(f))
}

// removeHostKeys removes every ssh_host_* file baked into the image: the
// guest must present only the keys banger generated and pinned.
func (p *planner) removeHostKeys(ctx context.Context) error {
	entries, _, err := p.v.list(ctx, "/etc/ssh")
	if err != nil {
		return err
	}
	var names []string
	for name, e := range entries {
		if strings.HasPrefix(name, "ssh_host_") && !e.isDir() {
			if err := safeName(name); err != nil {
				return errdefs.FailedPrecondition("cannot remove %q from the image: %w", "/etc/ssh/"+name, err)
			}
			names = append(names, name)
		}
	}
	slices.Sort(names)
	for _, name := range names {
		p.remove("/etc/ssh/" + name)
	}
	return nil
}

// verify reads every planned file back and checks modes and owners.
func (p *planner) verify(ctx context.Context) error {
	var cmds []string
	for i, f := range p.files {
		if !f.isDir {
			cmds = append(cmds, fmt.Sprintf("dump %s v%d", f.path, i))
		}
	}
	if _, err := p.v.d.run(ctx, false, cmds); err != nil {
		return fmt.Errorf("read back: %w", err)
	}
	lists := map[string]map[string]dirent{}
	for i, f := range p.files {
		if !f.isDir {
			got, err := os.ReadFile(filepath.Join(p.work, fmt.Sprintf("v%d", i)))
			if err != nil {
				return fmt.Errorf("read back %s: %w", f.path, err)
			}
			if !bytes.Equal(got, f.data) {
				return fmt.Errorf("read back %s: content differs from what was written", f.path)
			}
		}
		dir := path.Dir(f.path)
		if lists[dir] == nil {
			entries, err := p.v.d.ls(ctx, dir)
			if err != nil {
				return fmt.Errorf("read back: %w", err)
			}
			lists[dir] = entries
		}
		e, ok := lists[dir][path.Base(f.path)]
		if !ok || e.mode != f.mode || e.uid != f.uid || e.gid != f.gid {
			return fmt.Errorf("read back %s: got mode %o owner %d:%d, want mode %o owner %d:%d",
				f.path, e.mode, e.uid, e.gid, f.mode, f.uid, f.gid)
		}
	}
	return nil
}

// hostsFile is the image's /etc/hosts with its 127.0.1.1 line replaced by
// one naming the VM (after the 127.0.0.1 line), or a minimal hosts file if
// the image has none.
func hostsFile(old []byte, name string) []byte {
	if len(bytes.TrimSpace(old)) == 0 {
		old = []byte("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	}
	self := "127.0.1.1\t" + name
	var out []string
	placed := false
	for _, l := range strings.Split(strings.TrimRight(string(old), "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[0] == "127.0.1.1" {
			continue
		}
		out = append(out, l)
		if !placed && len(f) > 0 && f[0] == "127.0.0.1" {
			out = append(out, self)
			placed = true
		}
	}
	if !placed {
		out = append([]string{self}, out...)
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

func resolvConf(dns []netip.Addr) []byte {
	var b strings.Builder
	b.WriteString("# Written by banger.\n")
	for _, a := range dns {
		fmt.Fprintf(&b, "nameserver %s\n", a)
	}
	return []byte(b.String())
}

// NetworkConfig is the systemd-networkd file ApplyIdentity writes to
// NetworkFile: the NIC matched by its MAC (any Ethernet link without one),
// a static address, gateway and DNS, no DHCP, no IPv6 autoconfiguration
// (nothing on banger's bridge answers it, and it would delay "online").
func NetworkConfig(id Identity) []byte {
	var b strings.Builder
	b.WriteString("# Written by banger: this VM's network. Changes are lost when banger rewrites it.\n")
	b.WriteString("[Match]\n")
	if len(id.MAC) == 6 {
		fmt.Fprintf(&b, "MACAddress=%s\n", id.MAC)
	} else {
		b.WriteString("Type=ether\n")
	}
	b.WriteString("\n[Network]\n")
	fmt.Fprintf(&b, "Address=%s\n", id.Address)
	if id.Gateway.IsValid() {
		fmt.Fprintf(&b, "Gateway=%s\n", id.Gateway)
	}
	for _, a := range id.DNS {
		fmt.Fprintf(&b, "DNS=%s\n", a)
	}
	b.WriteString("DHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n")
	return []byte(b.String())
}

// removeWork removes a scratch directory made under workDir; what cannot be
// removed is reported by the caller, never silent.
func removeWork(work string) error {
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("remove scratch directory %q: %w", work, err)
	}
	return nil
}
