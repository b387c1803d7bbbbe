package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/client"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/testutil"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

type harness struct {
	handler http.Handler
	c       *client.Client
	socket  string
	dir     string
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(context.Background(), l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	fake := vmmtest.New()
	svc, err := daemon.New(daemon.Config{Layout: l, Drivers: vmm.Registry{"fake": fake}, DefaultVMM: "fake",
		GracefulTimeout: 5 * time.Second, KillTimeout: 2 * time.Second, Logger: slog.New(slog.DiscardHandler)}, st)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := Listen(l.ControlSocket(), -1)
	if err != nil {
		t.Fatal(err)
	}
	handler := Handler(svc, slog.New(slog.DiscardHandler))
	srv := &http.Server{Handler: handler, ConnContext: ConnContext}
	go srv.Serve(ln)
	c := client.New(l.ControlSocket())
	t.Cleanup(func() {
		vms, _ := c.ListVMs(context.Background())
		for _, v := range vms {
			c.DeleteVM(context.Background(), v.ID)
		}
		srv.Close()
		st.Close()
	})
	return &harness{handler: handler, c: c, socket: l.ControlSocket(), dir: dir}
}

func (h *harness) importImage(t *testing.T) {
	t.Helper()
	kernel, rootfs := testutil.FakeImageFiles(t, h.dir)
	if _, err := h.c.ImportImage(context.Background(), api.ImportImageRequest{Name: "default", Kernel: kernel, Rootfs: rootfs}); err != nil {
		t.Fatal(err)
	}
}

func TestStatusMapping(t *testing.T) {
	want := map[errdefs.Class]int{
		errdefs.ClassNotFound: 404, errdefs.ClassAlreadyExists: 409, errdefs.ClassConflict: 409,
		errdefs.ClassInvalidArgument: 400, errdefs.ClassFailedPrecondition: 412, errdefs.ClassUnavailable: 503,
		errdefs.ClassNotSupported: 501, errdefs.ClassInternal: 500,
	}
	for c, status := range want {
		if got := StatusOf(c); got != status {
			t.Errorf("StatusOf(%s) = %d, want %d", c, got, status)
		}
	}
}

func TestErrorsCrossTheWireWithTheirClass(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	_, err := h.c.GetVM(ctx, "ghost")
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), `vm "ghost" not found`) {
		t.Fatalf("not found: %v", err)
	}
	_, err = h.c.CreateVM(ctx, api.CreateVMRequest{Name: "../x"})
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("invalid: %v", err)
	}
	_, err = h.c.KillVM(ctx, "ghost", "NOPE")
	if !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Fatalf("bad signal must be rejected before the lookup: %v", err)
	}
	_, err = h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web"})
	if !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "banger image build") {
		t.Fatalf("missing default image: %v", err)
	}
	h.importImage(t)
	if _, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web"}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Fatalf("duplicate: %v", err)
	}
	if err := h.c.DeleteImage(ctx, "default"); !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), `"web"`) {
		t.Fatalf("image in use: %v", err)
	}
}

func rawRequest(t *testing.T, socket, method, path, body string) (int, api.ErrorResponse) {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, _ := http.NewRequest(method, "http://banger"+path, strings.NewReader(body))
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e api.ErrorResponse
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &e)
	return resp.StatusCode, e
}

func TestMalformedRequestsAreInvalidArgument(t *testing.T) {
	h := newHarness(t)
	for _, body := range []string{`{"name":`, `{"name":"x","bogus":1}`, `[1,2]`} {
		status, e := rawRequest(t, h.socket, "POST", "/v1/vms", body)
		if status != 400 || e.Error.Class != "invalid_argument" || e.Error.Message == "" {
			t.Errorf("body %q: %d %+v", body, status, e)
		}
	}
	status, e := rawRequest(t, h.socket, "GET", "/v2/vms", "")
	if status != 404 || e.Error.Class != "not_found" {
		t.Errorf("unknown route: %d %+v", status, e)
	}
	status, e = rawRequest(t, h.socket, "GET", "/v1/vms/x/ops?limit=-1", "")
	if status != 404 && status != 400 {
		t.Errorf("bad limit: %d %+v", status, e)
	}
}

func TestLifecycleOverTheAPI(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.importImage(t)
	v, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Start: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.State != "running" || v.Runtime.PID == 0 || v.Image != "default" || v.LastOperation == nil || v.LastOperation.Kind != "vm.start" {
		t.Fatalf("create --start: %+v", v)
	}
	if vms, err := h.c.ListVMs(ctx); err != nil || len(vms) != 1 || vms[0].Image != "default" || vms[0].Runtime.PID != v.Runtime.PID {
		t.Fatalf("vm list (image names, no per-vm detail): %v %+v", err, vms)
	}
	if v.Unsupported["vsock"] == "" {
		t.Fatal("a driver without vsock must say so in vm show")
	}
	if v, err = h.c.StopVM(ctx, "web", time.Second, false); err != nil || v.State != "stopped" {
		t.Fatalf("stop: %v %+v", err, v)
	}
	ops, err := h.c.Operations(ctx, "web", 0)
	if err != nil || len(ops) != 3 || ops[0].Kind != "vm.stop" || ops[2].Kind != "vm.create" {
		t.Fatalf("ops: %v %+v", err, ops)
	}
	var logs bytes.Buffer
	if err := h.c.Logs(ctx, "web", false, &logs); err != nil {
		t.Fatal(err)
	}
	if err := h.c.DeleteVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
	if vms, _ := h.c.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("vms after delete: %v", vms)
	}
}

func TestControlSocketIsPrivate(t *testing.T) {
	h := newHarness(t)
	fi, err := os.Stat(h.socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Fatalf("control socket mode %v is usable by others", fi.Mode().Perm())
	}
	// A second daemon on the same socket is refused while the first serves.
	if _, err := Listen(h.socket, -1); !errors.Is(err, errdefs.ErrConflict) {
		t.Fatalf("second listen: %v", err)
	}
}

func TestClientSaysWhenDaemonIsDown(t *testing.T) {
	c := client.New(filepath.Join(t.TempDir(), "nobody.sock"))
	_, err := c.ListVMs(context.Background())
	if !errors.Is(err, errdefs.ErrUnavailable) || !strings.Contains(err.Error(), "banger daemon") {
		t.Fatalf("err = %v", err)
	}
}

// TestImportNeedsARootPeer: the daemon reads import paths as root, so only
// a root peer may name them; the peer's uid comes from SO_PEERCRED.
func TestImportNeedsARootPeer(t *testing.T) {
	h := newHarness(t)
	kernel, rootfs := testutil.FakeImageFiles(t, h.dir)
	body := `{"name":"img","kernel":"` + kernel + `","rootfs":"` + rootfs + `"}`

	// Over the real socket the peer is this test process.
	status, e := rawRequest(t, h.socket, "POST", "/v1/images/import", body)
	if os.Geteuid() == 0 && status != http.StatusCreated {
		t.Fatalf("root peer refused: %d %+v", status, e)
	}
	if os.Geteuid() != 0 && (status != http.StatusPreconditionFailed || !strings.Contains(e.Error.Message, "only root")) {
		t.Fatalf("non-root peer: %d %+v", status, e)
	}

	// A request whose peer is another user (a --socket-group member).
	req := httptest.NewRequest("POST", "/v1/images/import", strings.NewReader(strings.Replace(body, `"img"`, `"img2"`, 1)))
	req = req.WithContext(context.WithValue(req.Context(), peerKey{}, 1000))
	rec := httptest.NewRecorder()
	h.handler.ServeHTTP(rec, req)
	if rec.Code != http.StatusPreconditionFailed || !strings.Contains(rec.Body.String(), "peer uid 1000") {
		t.Fatalf("uid 1000: %d %s", rec.Code, rec.Body.String())
	}
}

// TestListIsCompactShowIsWhole: vm list leaves out the per-VM VMM reason
// (one sentence repeated per VM); vm show and lifecycle replies carry it,
// the image's name and the last operation.
func TestListIsCompactShowIsWhole(t *testing.T) {
	h := newHarness(t)
	ctx := context.Background()
	h.importImage(t)
	for _, n := range []string{"a", "b"} {
		v, err := h.c.CreateVM(ctx, api.CreateVMRequest{Name: n, VCPUs: 1, MemoryMiB: 128})
		if err != nil {
			t.Fatal(err)
		}
		if v.Image != "default" || v.VMMReason == "" || v.LastOperation == nil || v.LastOperation.Kind != "vm.create" {
			t.Fatalf("create reply %+v", v)
		}
	}
	vms, err := h.c.ListVMs(ctx)
	if err != nil || len(vms) != 2 {
		t.Fatalf("list %v %v", vms, err)
	}
	// Each entry carries the listed fields with the values show gives.
	for _, e := range vms {
		v, err := h.c.GetVM(ctx, e.Name)
		if err != nil {
			t.Fatal(err)
		}
		want := api.VMSummary{ID: v.ID, Name: v.Name, State: v.State, VMM: v.VMM, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
			GuestIP: v.GuestIP, Image: "default", Runtime: api.SummaryRuntime{PID: v.Runtime.PID}, OwnerUID: v.OwnerUID}
		if e != want {
			t.Fatalf("list entry\n%+v\nshow\n%+v", e, want)
		}
	}
	v, err := h.c.GetVM(ctx, "a")
	if err != nil || v.VMMReason == "" || v.Image != "default" || v.LastOperation == nil {
		t.Fatalf("show %+v %v", v, err)
	}
}
