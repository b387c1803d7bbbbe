package identity

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"

	"github.com/banger-vm/banger/errdefs"
)

// readConfigDisk parses a config disk into "mode uid:gid" and content by
// path, checking its framing.
func readConfigDisk(t *testing.T, data []byte) (meta, content map[string]string, order []string) {
	t.Helper()
	if len(data)%512 != 0 {
		t.Fatalf("config disk is %d bytes, not a whole number of sectors", len(data))
	}
	if !bytes.HasPrefix(data, []byte(ConfigDiskMagic)) || !bytes.Equal(data[len(ConfigDiskMagic):512], make([]byte, 512-len(ConfigDiskMagic))) {
		t.Fatalf("first sector is not the magic and zeros: %q", data[:64])
	}
	meta, content = map[string]string{}, map[string]string{}
	r := cpio.NewReader(bytes.NewReader(data[512:]))
	for {
		h, err := r.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("cpio: %v", err)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		kind := "file"
		switch h.Mode & cpio.ModeType {
		case cpio.TypeDir:
			kind = "dir"
		case cpio.TypeReg:
		default:
			t.Fatalf("%s: type %o", h.Name, h.Mode&cpio.ModeType)
		}
		p := "/" + h.Name
		meta[p] = fmt.Sprintf("%s %04o %d:%d", kind, h.Mode&cpio.ModePerm, h.Uid, h.Guid)
		content[p] = string(body)
		order = append(order, p)
	}
	return meta, content, order
}

var bangerAccount = account{name: "banger", uid: 1000, gid: 1001, home: "/home/banger"}

func TestConfigDiskContent(t *testing.T) {
	id := testIdentity(t, "web")
	data, err := ConfigDisk(files(id, bangerAccount, []byte("127.0.0.1\tlocalhost\n127.0.1.1\ttemplate\n")))
	if err != nil {
		t.Fatal(err)
	}
	meta, content, order := readConfigDisk(t, data)
	wantMeta := map[string]string{
		"/etc/hostname":                          "file 0644 0:0",
		"/etc/hosts":                             "file 0644 0:0",
		"/etc/machine-id":                        "file 0444 0:0",
		"/etc/resolv.conf":                       "file 0644 0:0",
		"/etc/systemd":                           "dir 0755 0:0",
		"/etc/systemd/network":                   "dir 0755 0:0",
		"/etc/systemd/network/10-banger.network": "file 0644 0:0",
		"/etc/ssh":                               "dir 0755 0:0",
		"/etc/ssh/ssh_host_ed25519_key":          "file 0600 0:0",
		"/etc/ssh/ssh_host_ed25519_key.pub":      "file 0644 0:0",
		"/home":                                  "dir 0755 0:0",
		"/home/banger":                           "dir 0700 1000:1001",
		"/home/banger/.ssh":                      "dir 0700 1000:1001",
		"/home/banger/.ssh/authorized_keys":      "file 0600 1000:1001",
	}
	if len(meta) != len(wantMeta) {
		t.Errorf("archive holds %d entries, want %d: %v", len(meta), len(wantMeta), order)
	}
	for p, w := range wantMeta {
		if meta[p] != w {
			t.Errorf("%s: %q, want %q", p, meta[p], w)
		}
	}
	wantContent := map[string]string{
		"/etc/hostname":   "web\n",
		"/etc/hosts":      "127.0.0.1\tlocalhost\n127.0.1.1\tweb\n",
		"/etc/machine-id": id.MachineID + "\n",
		"/etc/resolv.conf": "# Written by banger.\n" +
			"nameserver 1.1.1.1\nnameserver 9.9.9.9\n",
		"/etc/systemd/network/10-banger.network": string(NetworkConfig(id)),
		"/etc/ssh/ssh_host_ed25519_key":          string(id.HostKeys[0].Private),
		"/etc/ssh/ssh_host_ed25519_key.pub":      string(id.HostKeys[0].PublicFile()),
		"/home/banger/.ssh/authorized_keys":      id.AuthorizedKey + "\n",
	}
	for p, w := range wantContent {
		if content[p] != w {
			t.Errorf("%s:\n got %q\nwant %q", p, content[p], w)
		}
	}
	for _, w := range []string{"MACAddress=52:54:00:ab:cd:ef", "Address=172.30.0.2/24", "Gateway=172.30.0.1", "DNS=1.1.1.1", "DNS=9.9.9.9"} {
		if !strings.Contains(content[NetworkFile], w+"\n") {
			t.Errorf("network file lacks %q:\n%s", w, content[NetworkFile])
		}
	}
	// A directory always comes before what it holds: the init applies in order.
	seen := map[string]bool{"/": true, "/etc": true}
	for _, p := range order {
		if !seen[filepath.Dir(p)] {
			t.Errorf("%s comes before its directory in %v", p, order)
		}
		seen[p] = true
	}
}

func TestConfigDiskRefusesPathsTheInitDoesNotApply(t *testing.T) {
	ok := File{Path: "/etc/hostname", Mode: 0o644, Data: []byte("web\n")}
	for name, f := range map[string]File{
		"relative":                 {Path: "etc/hostname", Mode: 0o644},
		"dot dot":                  {Path: "/etc/../etc/shadow", Mode: 0o644},
		"escaping home":            {Path: "/home/../etc/.ssh/authorized_keys", Mode: 0o600},
		"outside the list":         {Path: "/etc/shadow", Mode: 0o600},
		"a binary":                 {Path: "/bin/sh", Mode: 0o755},
		"deep home":                {Path: "/home/a/b/.ssh/authorized_keys", Mode: 0o600},
		"host key in a subdir":     {Path: "/etc/ssh/ssh_host_a/ssh_host_b_key", Mode: 0o600},
		"not a host key":           {Path: "/etc/ssh/sshd_config", Mode: 0o644},
		"file where a dir goes":    {Path: "/etc/ssh", Mode: 0o644},
		"dir where a file goes":    {Path: "/etc/hostname", Mode: fs.ModeDir | 0o755},
		"symlink":                  {Path: "/etc/resolv.conf", Mode: fs.ModeSymlink | 0o777},
		"setuid":                   {Path: "/etc/hostname", Mode: fs.ModeSetuid | 0o755},
		"space in the name":        {Path: "/home/a b/.ssh/authorized_keys", Mode: 0o600},
		"line break in the name":   {Path: "/home/a\netc/.ssh/authorized_keys", Mode: 0o600},
		"listed twice (duplicate)": ok,
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := ConfigDisk([]File{ok, f}); !errors.Is(err, errdefs.ErrInvalidArgument) {
				t.Fatalf("want an invalid argument, got %v", err)
			}
		})
	}
}

func TestWriteConfigDisk(t *testing.T) {
	requireE2fsprogs(t)
	img := mkImage(t, fixtureTree(t, true, true))
	before := fileSum(t, img)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.img")
	id := testIdentity(t, "web")
	facts, err := ReadImage(ctxT(t), img, dir, id.User)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteConfigDisk(cfg, id, facts); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(cfg)
	if err != nil || st.Mode() != 0o600 {
		t.Fatalf("config disk mode %v, %v; want 0600 (it holds private host keys)", st.Mode(), err)
	}
	data, _ := os.ReadFile(cfg)
	meta, content, _ := readConfigDisk(t, data)
	// The account and the hosts file come from the image.
	if meta["/home/banger/.ssh/authorized_keys"] != "file 0600 1000:1001" {
		t.Errorf("authorized_keys: %q", meta["/home/banger/.ssh/authorized_keys"])
	}
	if h := content["/etc/hosts"]; !strings.Contains(h, "127.0.1.1\tweb\n") || !strings.Contains(h, "# IPv6\n") || strings.Contains(h, "template") {
		t.Errorf("/etc/hosts is not the image's amended:\n%s", h)
	}
	if fileSum(t, img) != before {
		t.Fatal("writing the config disk changed the image")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("left behind in the work dir: %v", ents)
	}

	// Hostile values are refused, and nothing is written.
	for name, mutate := range map[string]func(*Identity){
		"hostname with a newline":    func(id *Identity) { id.Hostname = "web\nx" },
		"user with a slash":          func(id *Identity) { id.User = "../root" },
		"two authorized key lines":   func(id *Identity) { id.AuthorizedKey += "\n" + id.AuthorizedKey },
		"host key file with a slash": func(id *Identity) { id.HostKeys[0].File = "../shadow" },
	} {
		id := testIdentity(t, "web")
		mutate(&id)
		bad := filepath.Join(dir, "bad.img")
		if err := WriteConfigDisk(bad, id, facts); !errors.Is(err, errdefs.ErrInvalidArgument) {
			t.Errorf("%s: want an invalid argument, got %v", name, err)
		}
		if _, err := os.Stat(bad); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: a config disk was written", name)
		}
	}
	// An image without the user is a failed precondition, naming the image.
	if _, err := ReadImage(ctxT(t), img, dir, "nobody"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), img) {
		t.Errorf("missing user: %v", err)
	}
	// Facts of another user are refused.
	id.User = "root"
	if err := WriteConfigDisk(filepath.Join(dir, "x.img"), id, facts); !errors.Is(err, errdefs.ErrInvalidArgument) || !strings.Contains(err.Error(), `"web"`) {
		t.Errorf("facts of another user: %v", err)
	}
}

// BenchmarkWriteConfigDisk measures the per-VM create-time cost: writing the
// disk from facts read once per image; BenchmarkReadImage that read.
func BenchmarkWriteConfigDisk(b *testing.B) {
	if _, err := exec.LookPath("debugfs"); err != nil {
		b.Skip("needs debugfs and mkfs.ext4 (e2fsprogs)")
	}
	root := b.TempDir()
	for p, data := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nbanger:x:1000:1000::/home/banger:/bin/sh\n",
		"etc/hosts":  "127.0.0.1\tlocalhost\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, p), []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	img := filepath.Join(b.TempDir(), "root.ext4")
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", root, img, "64M").CombinedOutput(); err != nil {
		b.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	hk, _ := NewHostKeys()
	mid, _ := NewMachineID()
	_, line, _ := EnsureClientKey(filepath.Join(b.TempDir(), "id"))
	id := Identity{Hostname: "web", MachineID: mid, User: "banger", AuthorizedKey: line, HostKeys: hk}
	id.Address = netip.MustParsePrefix("172.30.0.2/24")
	dir := b.TempDir()
	facts, err := ReadImage(b.Context(), img, dir, "banger")
	if err != nil {
		b.Fatal(err)
	}
	b.Run("ReadImage", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if _, err := ReadImage(b.Context(), img, dir, "banger"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("WriteConfigDisk", func(b *testing.B) {
		for i := 0; i < b.N; i++ {
			if err := WriteConfigDisk(filepath.Join(dir, "config.img"), id, facts); err != nil {
				b.Fatal(err)
			}
		}
	})
}
