package e2e

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/banger-vm/banger/api"
)

// TestGroupMemberIsRefusedOnRootsVM: a non-root member of --socket-group
// cannot see, stop or delete root's VM and is refused a host port below
// 1024; its own VM it sees and deletes.
func TestGroupMemberIsRefusedOnRootsVM(t *testing.T) {
	requireE2E(t)
	const group, name = "bgr-e2e-grp", "bgr-e2e-member"
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v %s", args, err, out)
		}
	}
	exec.Command("userdel", name).Run() // a leftover of an interrupted run
	exec.Command("groupdel", group).Run()
	run("groupadd", "--system", group)
	t.Cleanup(func() { exec.Command("groupdel", group).Run() })
	run("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "-G", group, name)
	t.Cleanup(func() { exec.Command("userdel", name).Run() })
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(g.Gid)

	d := startDaemon(t, "--socket-group", group)
	// The member reaches the socket and the binary through their dirs.
	for _, dir := range []string{filepath.Dir(d.runDir), filepath.Dir(d.bin)} {
		if err := os.Chmod(dir, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	d.importTestImage()
	d.createVM("rootvm")

	member := func(want int, args ...string) string {
		t.Helper()
		cmd := exec.Command(d.bin, append([]string{"--state-dir", d.stateDir, "--runtime-dir", d.runDir}, args...)...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{uint32(gid)}}}
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != want {
			t.Fatalf("as %s: banger %s: exit %d, want %d; stderr: %s", name, strings.Join(args, " "), code, want, errb.String())
		}
		return out.String() + errb.String()
	}
	var vms []api.VM
	mustJSON(t, member(0, "vm", "list", "-o", "json"), &vms)
	if len(vms) != 0 {
		t.Fatalf("the member sees %d vms, want none of root's", len(vms))
	}
	for _, args := range [][]string{{"vm", "show", "rootvm"}, {"vm", "stop", "rootvm"}, {"vm", "delete", "rootvm"}} {
		if msg := member(9, args...); !strings.Contains(msg, "belongs to another user") {
			t.Fatalf("%v: %q", args, msg)
		}
	}
	if msg := member(9, "vm", "create", "low", "--cpus", "1", "--memory", "256M", "--publish", "80:80"); !strings.Contains(msg, "only root may publish") {
		t.Fatalf("port 80: %q", msg)
	}
	member(0, "vm", "create", "mine", "--cpus", "1", "--memory", "256M", "--vmm", vmmKind())
	mustJSON(t, member(0, "vm", "list", "-o", "json"), &vms)
	if len(vms) != 1 || vms[0].Name != "mine" || vms[0].OwnerUID != uid {
		t.Fatalf("the member lists %+v, want its own vm", vms)
	}
	member(0, "vm", "delete", "mine")
	if v := d.show("rootvm"); v.State != "stopped" {
		t.Fatalf("root's vm after the member's attempts: %s", v.State)
	}
}
