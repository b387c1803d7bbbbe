package daemon

import (
	"context"
	"errors"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// A user other than root neither sees nor acts on root's VM, may use
// root's image, owns what it creates, and is refused privileged ports and
// oversized builds; root sees and acts on everything.
func TestOwnership(t *testing.T) {
	e, _ := newNetEnv(t)
	root := WithCaller(context.Background(), 0)
	user := WithCaller(context.Background(), 1234)
	if _, err := e.svc.CreateVM(root, api.CreateVMRequest{Name: "roots", VCPUs: 1, MemoryMiB: 128}); err != nil {
		t.Fatal(err)
	}
	mine, err := e.svc.CreateVM(user, api.CreateVMRequest{Name: "mine", VCPUs: 1, MemoryMiB: 128})
	if err != nil {
		t.Fatalf("a user creating from root's image: %v", err)
	}
	if mine.OwnerUID != 1234 {
		t.Fatalf("owner %d, want 1234", mine.OwnerUID)
	}
	vms, _ := e.svc.ListVMs(user)
	if len(vms) != 1 || vms[0].Name != "mine" {
		t.Fatalf("the user lists %d vms, want only its own", len(vms))
	}
	if all, _ := e.svc.ListVMs(root); len(all) != 2 {
		t.Fatalf("root lists %d vms, want 2", len(all))
	}
	denied := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, errdefs.ErrPermissionDenied) {
			t.Fatalf("%s: err = %v, want permission denied", what, err)
		}
	}
	_, err = e.svc.GetVM(user, "roots")
	denied("show root's vm", err)
	_, err = e.svc.StartVM(user, "roots")
	denied("start root's vm", err)
	_, err = e.svc.StopVM(user, "roots", StopOptions{})
	denied("stop root's vm", err)
	denied("delete root's vm", e.svc.DeleteVM(user, "roots"))
	_, err = e.svc.Operations(user, "roots", 0)
	denied("ops of root's vm", err)
	_, err = e.svc.CreateVM(user, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"80:80"}})
	denied("publish port 80", err)
	if _, err := e.svc.CreateVM(user, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}}); err != nil {
		t.Fatalf("publish port 8080: %v", err)
	}
	_, err = e.svc.BuildSpec(user, api.BuildImageRequest{Name: "huge", SizeBytes: 1 << 40})
	denied("a 1 TiB build", err)
	if _, err := e.svc.GetVM(root, "mine"); err != nil {
		t.Fatalf("root shows the user's vm: %v", err)
	}
	denied("delete root's image", e.svc.DeleteImage(user, DefaultImage))
	if err := e.svc.DeleteVM(root, "mine"); err != nil {
		t.Fatalf("root deletes the user's vm: %v", err)
	}
}
