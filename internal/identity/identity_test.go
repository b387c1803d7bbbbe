package identity

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/testutil"
)

func requireE2fsprogs(t *testing.T) {
	t.Helper()
	testutil.RequireTools(t, "mkfs.ext4", "debugfs", "e2fsck")
}

// fixtureTree writes the root tree of a template image: a banger user, a
// hosts file naming the template, baked host keys, resolv.conf as a symlink
// and an old authorized_keys.
func fixtureTree(t *testing.T, withHome, withSSHDir bool) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "root")
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\n" +
			"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n" +
			"banger:x:1000:1001:Banger:/home/banger:/bin/bash\n",
		"etc/group":                            "root:x:0:\nbanger:x:1001:\n",
		"etc/hostname":                         "template\n",
		"etc/hosts":                            "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n\n# IPv6\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/machine-id":                       "0123456789abcdef0123456789abcdef\n",
		"run/systemd/resolve/stub-resolv.conf": "nameserver 127.0.0.53\n",
	}
	if withSSHDir {
		files["etc/ssh/sshd_config"] = "PasswordAuthentication no\n"
		for _, k := range []string{"rsa", "ecdsa", "ed25519"} {
			files["etc/ssh/ssh_host_"+k+"_key"] = "baked private " + k + "\n"
			files["etc/ssh/ssh_host_"+k+"_key.pub"] = "baked public " + k + "\n"
		}
	}
	if withHome {
		files["home/banger/.ssh/authorized_keys"] = "ssh-ed25519 AAAAold template-builder\n"
		files["home/banger/.profile"] = "# profile\n"
	}
	for p, data := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(root, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	return root
}

func mkImage(t *testing.T, tree string) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "root.ext4")
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", tree, img, "32M").CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	return img
}

func debugfsR(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command("debugfs", "-R", req, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", req, err)
	}
	return string(out)
}

func catImage(t *testing.T, img, p string) string {
	t.Helper()
	return debugfsR(t, img, "cat "+p)
}

var (
	statTypeMode = regexp.MustCompile(`Type: (\S+)\s+Mode:\s+(\d+)`)
	statOwner    = regexp.MustCompile(`User:\s+(\d+)\s+Group:\s+(\d+)`)
)

// statImage returns "type mode uid:gid" of p, or "" when it is absent.
func statImage(t *testing.T, img, p string) string {
	t.Helper()
	cmd := exec.Command("debugfs", "-R", "stat "+p, img)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs stat %s: %v", p, err)
	}
	m1 := statTypeMode.FindStringSubmatch(string(out))
	m2 := statOwner.FindStringSubmatch(string(out))
	if m1 == nil || m2 == nil {
		return ""
	}
	return m1[1] + " " + m1[2] + " " + m2[1] + ":" + m2[2]
}

func requireClean(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn reports problems: %v\n%s", err, out)
	}
}

func testIdentity(t *testing.T, name string) Identity {
	t.Helper()
	hk, err := NewHostKeys()
	if err != nil {
		t.Fatal(err)
	}
	mid, err := NewMachineID()
	if err != nil {
		t.Fatal(err)
	}
	_, line, err := EnsureClientKey(filepath.Join(t.TempDir(), "id"))
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC("52:54:00:ab:cd:ef")
	return Identity{
		Hostname:      name,
		MachineID:     mid,
		MAC:           mac,
		Address:       netip.MustParsePrefix("172.30.0.2/24"),
		Gateway:       netip.MustParseAddr("172.30.0.1"),
		DNS:           []netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("9.9.9.9")},
		User:          DefaultUser,
		AuthorizedKey: line,
		HostKeys:      hk,
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func checkApplied(t *testing.T, img string, id Identity, home string) {
	t.Helper()
	want := map[string]string{
		"/etc/hostname":   id.Hostname + "\n",
		"/etc/machine-id": id.MachineID + "\n",
		"/etc/resolv.conf": "# Written by banger.\n" +
			"nameserver 1.1.1.1\nnameserver 9.9.9.9\n",
		"/etc/systemd/network/10-banger.network": "# Written by banger: this VM's network. Changes are lost when banger rewrites it.\n" +
			"[Match]\nMACAddress=52:54:00:ab:cd:ef\n\n" +
			"[Network]\nAddress=172.30.0.2/24\nGateway=172.30.0.1\nDNS=1.1.1.1\nDNS=9.9.9.9\n" +
			"DHCP=no\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
		home + "/.ssh/authorized_keys":      id.AuthorizedKey + "\n",
		"/etc/ssh/ssh_host_ed25519_key":     string(id.HostKeys[0].Private),
		"/etc/ssh/ssh_host_ed25519_key.pub": string(id.HostKeys[0].PublicFile()),
	}
	for p, w := range want {
		if got := catImage(t, img, p); got != w {
			t.Errorf("%s:\n got %q\nwant %q", p, got, w)
		}
	}
	hosts := catImage(t, img, "/etc/hosts")
	if !strings.Contains(hosts, "127.0.0.1\tlocalhost\n127.0.1.1\t"+id.Hostname+"\n") ||
		strings.Count(hosts, "127.0.1.1") != 1 || !strings.Contains(hosts, "::1\tlocalhost") {
		t.Errorf("/etc/hosts:\n%s", hosts)
	}
	modes := map[string]string{
		"/etc/hostname":                          "regular 0644 0:0",
		"/etc/hosts":                             "regular 0644 0:0",
		"/etc/machine-id":                        "regular 0444 0:0",
		"/etc/resolv.conf":                       "regular 0644 0:0",
		"/etc/systemd/network/10-banger.network": "regular 0644 0:0",
		"/etc/ssh/ssh_host_ed25519_key":          "regular 0600 0:0",
		"/etc/ssh/ssh_host_ed25519_key.pub":      "regular 0644 0:0",
		home + "/.ssh":                           "directory 0700 1000:1001",
		home + "/.ssh/authorized_keys":           "regular 0600 1000:1001",
	}
	for p, w := range modes {
		if got := statImage(t, img, p); got != w {
			t.Errorf("%s: got %q, want %q", p, got, w)
		}
	}
	ls := debugfsR(t, img, "ls /etc/ssh")
	for _, gone := range []string{"ssh_host_rsa_key", "ssh_host_ecdsa_key"} {
		if strings.Contains(ls, gone) {
			t.Errorf("baked %s still in /etc/ssh: %s", gone, ls)
		}
	}
	// The guest's host key is the one banger pins.
	signer, err := ssh.ParsePrivateKey([]byte(catImage(t, img, "/etc/ssh/ssh_host_ed25519_key")))
	if err != nil || string(signer.PublicKey().Marshal()) != string(id.HostKeys[0].Public.Marshal()) {
		t.Errorf("host key in the image is not the generated one: %v", err)
	}
	requireClean(t, img)
}

func TestApplyIdentity(t *testing.T) {
	requireE2fsprogs(t)
	img := mkImage(t, fixtureTree(t, true, true))
	id := testIdentity(t, "web")
	work := t.TempDir()
	if ok, reason := CanApplyIdentity(ctxT(t), img, work, DefaultUser); !ok {
		t.Fatalf("CanApplyIdentity: %s", reason)
	}
	requireEmptyDir(t, work)
	if err := ApplyIdentity(ctxT(t), img, work, id); err != nil {
		t.Fatal(err)
	}
	requireEmptyDir(t, work)
	checkApplied(t, img, id, "/home/banger")
	// A missing work directory is an error, not a fall-back to /tmp.
	missing := filepath.Join(work, "missing")
	if err := ApplyIdentity(ctxT(t), img, missing, id); err == nil {
		t.Error("ApplyIdentity succeeded with a missing work directory")
	}
	if ok, _ := CanApplyIdentity(ctxT(t), img, missing, DefaultUser); ok {
		t.Error("CanApplyIdentity succeeded with a missing work directory")
	}
	if got := catImage(t, img, "/home/banger/.profile"); got != "# profile\n" {
		t.Errorf("an unrelated file changed: %q", got)
	}
	if got := catImage(t, img, "/run/systemd/resolve/stub-resolv.conf"); got != "nameserver 127.0.0.53\n" {
		t.Errorf("the old resolv.conf target changed: %q", got)
	}

	// Applying again (another VM made from a copy) replaces everything.
	id2 := testIdentity(t, "db-2")
	if err := ApplyIdentity(ctxT(t), img, "", id2); err != nil {
		t.Fatal(err)
	}
	checkApplied(t, img, id2, "/home/banger")
}

func TestApplyIdentityMakesMissingDirs(t *testing.T) {
	requireE2fsprogs(t)
	img := mkImage(t, fixtureTree(t, false, false))
	id := testIdentity(t, "web")
	id.MAC = nil
	id.Gateway = netip.Addr{}
	if err := ApplyIdentity(ctxT(t), img, "", id); err != nil {
		t.Fatal(err)
	}
	for p, w := range map[string]string{
		"/home":                "directory 0755 0:0",
		"/home/banger":         "directory 0700 1000:1001",
		"/etc/ssh":             "directory 0755 0:0",
		"/etc/systemd":         "directory 0755 0:0",
		"/etc/systemd/network": "directory 0755 0:0",
	} {
		if got := statImage(t, img, p); got != w {
			t.Errorf("%s: got %q, want %q", p, got, w)
		}
	}
	nw := catImage(t, img, NetworkFile)
	if !strings.Contains(nw, "[Match]\nType=ether\n") || strings.Contains(nw, "Gateway") {
		t.Errorf("network file without MAC and gateway:\n%s", nw)
	}
	if got := catImage(t, img, "/home/banger/.ssh/authorized_keys"); got != id.AuthorizedKey+"\n" {
		t.Errorf("authorized_keys %q", got)
	}
	requireClean(t, img)
}

// requireEmptyDir fails unless dir is empty: ApplyIdentity's work files
// (the VM's private host keys among them) must not outlive the call.
func requireEmptyDir(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("left in the work directory: %s", e.Name())
	}
}

func fileSum(t *testing.T, p string) [32]byte {
	t.Helper()
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(data)
}

func TestApplyIdentityRefusesUnsafeImages(t *testing.T) {
	requireE2fsprogs(t)
	must := func(t *testing.T, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	cases := map[string]func(t *testing.T, root string){
		"host key name with quotes and spaces": func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/ssh", `ssh_host_x" key 'y`), []byte("x"), 0o600))
		},
		"host key name with a line break and a command": func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/ssh", "ssh_host_x\nmkdir pwned"), []byte("x"), 0o600))
		},
		"home is a symlink": func(t *testing.T, root string) {
			must(t, os.RemoveAll(filepath.Join(root, "home")))
			must(t, os.MkdirAll(filepath.Join(root, "var/home/banger"), 0o755))
			must(t, os.Symlink("var/home", filepath.Join(root, "home")))
		},
		"home with a space": func(t *testing.T, root string) {
			must(t, os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("banger:x:1000:1000::/home/b anger:/bin/sh\n"), 0o644))
		},
		"hostname is a directory": func(t *testing.T, root string) {
			must(t, os.Remove(filepath.Join(root, "etc/hostname")))
			must(t, os.Mkdir(filepath.Join(root, "etc/hostname"), 0o755))
		},
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			root := fixtureTree(t, true, true)
			mutate(t, root)
			img := mkImage(t, root)
			before := fileSum(t, img)
			work := t.TempDir()
			err := ApplyIdentity(ctxT(t), img, work, testIdentity(t, "web"))
			if !errors.Is(err, errdefs.ErrFailedPrecondition) {
				t.Fatalf("want a failed precondition, got %v", err)
			}
			requireEmptyDir(t, work)
			if !strings.Contains(err.Error(), img) {
				t.Errorf("error does not name the disk: %v", err)
			}
			if fileSum(t, img) != before {
				t.Fatal("the image changed although ApplyIdentity refused it")
			}
		})
	}

	img := mkImage(t, fixtureTree(t, true, true))
	before := fileSum(t, img)
	for name, mutate := range map[string]func(*Identity){
		"hostname with a newline":    func(id *Identity) { id.Hostname = "web\nx" },
		"hostname with a space":      func(id *Identity) { id.Hostname = "a b" },
		"machine id not hex":         func(id *Identity) { id.MachineID = "zz" },
		"user with a slash":          func(id *Identity) { id.User = "../root" },
		"two authorized key lines":   func(id *Identity) { id.AuthorizedKey += "\n" + id.AuthorizedKey },
		"no host keys":               func(id *Identity) { id.HostKeys = nil },
		"host key file with a slash": func(id *Identity) { id.HostKeys[0].File = "../shadow" },
		"no address":                 func(id *Identity) { id.Address = netip.Prefix{} },
		"mismatched host key": func(id *Identity) {
			other, _ := NewHostKeys()
			id.HostKeys[0].Public = other[0].Public
		},
	} {
		id := testIdentity(t, "web")
		mutate(&id)
		if err := ApplyIdentity(ctxT(t), img, "", id); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: want an invalid argument, got %v", name, err)
		}
	}
	if fileSum(t, img) != before {
		t.Fatal("the image changed although the identity was invalid")
	}
}

func TestCanApplyIdentity(t *testing.T) {
	requireE2fsprogs(t)
	ctx := ctxT(t)
	img := mkImage(t, fixtureTree(t, false, true))
	if ok, reason := CanApplyIdentity(ctx, img, "", "banger"); !ok {
		t.Fatalf("template image: %s", reason)
	}
	if ok, reason := CanApplyIdentity(ctx, img, "", "alice"); ok || !strings.Contains(reason, `"alice"`) {
		t.Fatalf("image without the user: %v %q", ok, reason)
	}

	empty := t.TempDir()
	if err := os.Mkdir(filepath.Join(empty, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if ok, reason := CanApplyIdentity(ctx, mkImage(t, empty), "", "banger"); ok || !strings.Contains(reason, "/etc/passwd") {
		t.Fatalf("image without /etc/passwd: %v %q", ok, reason)
	}

	notExt := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(notExt, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if ok, reason := CanApplyIdentity(ctx, notExt, "", "banger"); ok || !strings.Contains(reason, "not an ext4") {
		t.Fatalf("non-ext4 disk: %v %q", ok, reason)
	}
}

// TestCheckExtImage needs no tools: it checks the superblock fields read.
func TestCheckExtImage(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, magic uint16, incompat uint32) string {
		b := make([]byte, 4096)
		binary.LittleEndian.PutUint16(b[extSuperblock+0x38:], magic)
		binary.LittleEndian.PutUint32(b[extSuperblock+0x60:], incompat)
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := checkExtImage(write("ok", extMagic, 0x2|0x40)); err != nil {
		t.Fatal(err)
	}
	for name, p := range map[string]string{
		"recover": write("recover", extMagic, 0x4),
		"jdev":    write("jdev", extMagic, 0x8),
		"magic":   write("magic", 0x1234, 0),
	} {
		if err := checkExtImage(p); !errors.Is(err, errdefs.ErrFailedPrecondition) {
			t.Errorf("%s: %v", name, err)
		}
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkExtImage(short); !errors.Is(err, errdefs.ErrFailedPrecondition) {
		t.Errorf("short: %v", err)
	}
}

func TestSafePath(t *testing.T) {
	for _, p := range []string{"/etc/hostname", "/home/banger/.ssh", "/", "/a/b-c_d.e+f@g"} {
		if err := safePath(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "etc", "/etc/", "/a//b", "/a/../b", "/a b", "/a\"b", "/a\nb", "/-rf", "/a/-b", "/a;b", "/a#b", "/" + strings.Repeat("x", 256)} {
		if err := safePath(p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}
