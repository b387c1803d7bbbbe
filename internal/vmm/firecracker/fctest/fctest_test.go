package fctest

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// loadSpec fails the test when the specification cannot be found: the
// double is worthless without it.
func loadSpec(t *testing.T) *Spec {
	t.Helper()
	p, err := SpecPath()
	if err != nil {
		t.Fatal(err)
	}
	spec, err := LoadSpec(p)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// serve runs s on a unix socket and returns a client for it.
func serve(t *testing.T, s *Server) func(method, path, body string) (int, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: s}
	go func() { _ = hs.Serve(l) }()
	t.Cleanup(func() { hs.Close(); s.Close() })
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	return func(method, path, body string) (int, string) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, "http://localhost"+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var f struct {
			FaultMessage string `json:"fault_message"`
		}
		_ = json.Unmarshal(b, &f)
		return resp.StatusCode, f.FaultMessage
	}
}

func bootFiles(t *testing.T) (kernel, disk string) {
	dir := t.TempDir()
	kernel, disk = filepath.Join(dir, "vmlinux"), filepath.Join(dir, "rootfs")
	for _, p := range []string{kernel, disk} {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return kernel, disk
}

func TestSpecPathOverride(t *testing.T) {
	t.Setenv(EnvSpec, filepath.Join(t.TempDir(), "missing.yaml"))
	if _, err := SpecPath(); err == nil || !strings.Contains(err.Error(), EnvSpec) {
		t.Fatalf("a missing spec named by $%s must be an error naming it, got %v", EnvSpec, err)
	}
}

func TestSpecLoads(t *testing.T) {
	spec := loadSpec(t)
	if spec.Version != "1.16.1" {
		t.Fatalf("spec version %q, want 1.16.1", spec.Version)
	}
}

// The double accepts a full, valid configuration and boot.
func TestValidSequence(t *testing.T) {
	s := NewServer(loadSpec(t))
	do := serve(t, s)
	kernel, disk := bootFiles(t)
	vsock := filepath.Join(t.TempDir(), "v.sock")
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/version", ""},
		{"GET", "/", ""},
		{"PUT", "/logger", `{"level":"Info","show_level":true}`},
		{"PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256}`},
		{"GET", "/machine-config", ""},
		{"PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `","boot_args":"console=ttyS0"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"02:fc:00:00:00:01"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"` + vsock + `"}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `"}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
	} {
		if code, msg := do(r.method, r.path, r.body); code/100 != 2 {
			t.Errorf("%s %s: %d %s", r.method, r.path, code, msg)
		}
	}
	for _, r := range s.Requests() {
		if r.Violation != "" {
			t.Errorf("violation: %s", r.Violation)
		}
	}
}

// Requests the specification rejects are answered 400 and recorded as
// violations.
func TestSpecViolations(t *testing.T) {
	kernel, disk := bootFiles(t)
	for _, r := range []struct{ name, method, path, body, want string }{
		{"vcpus over 32", "PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":256}`, "vcpu_count"},
		{"vcpus zero", "PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":256}`, "vcpu_count"},
		{"missing required field", "PUT", "/machine-config", `{"vcpu_count":1}`, "mem_size_mib"},
		{"wrong type", "PUT", "/machine-config", `{"vcpu_count":"two","mem_size_mib":256}`, "vcpu_count"},
		{"unknown field", "PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `","kernel_args":"x"}`, "kernel_args"},
		{"drive without is_root_device", "PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `"}`, "is_root_device"},
		{"bad enum", "PUT", "/actions", `{"action_type":"Reboot"}`, "action_type"},
		{"cid below 3", "PUT", "/vsock", `{"guest_cid":2,"uds_path":"/tmp/x"}`, "guest_cid"},
		{"no body", "PUT", "/boot-source", ``, "body"},
		{"not json", "PUT", "/logger", `level=Info`, ""},
		{"unknown path", "PUT", "/kernel", `{}`, "no such path"},
		{"unknown method", "DELETE", "/drives/rootfs", ``, "no such method"},
		{"body on GET", "GET", "/version", `{}`, ""},
	} {
		t.Run(r.name, func(t *testing.T) {
			s := NewServer(loadSpec(t))
			code, msg := serve(t, s)(r.method, r.path, r.body)
			if code != http.StatusBadRequest || msg == "" {
				t.Fatalf("got %d %q, want a 400 fault", code, msg)
			}
			reqs := s.Requests()
			if len(reqs) != 1 || reqs[0].Violation == "" {
				t.Fatalf("no violation recorded: %+v", reqs)
			}
			if !strings.Contains(reqs[0].Violation, r.want) {
				t.Fatalf("violation %q does not mention %q", reqs[0].Violation, r.want)
			}
		})
	}
}

// After InstanceStart the pre-boot-only resources are refused as
// Firecracker refuses them; before it, the post-boot-only ones are.
func TestBootStateRules(t *testing.T) {
	kernel, disk := bootFiles(t)
	s := NewServer(loadSpec(t))
	do := serve(t, s)

	for _, r := range []struct{ method, path, body string }{
		{"PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `"}`},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"PATCH", "/vm", `{"state":"Paused"}`},
	} {
		if code, msg := do(r.method, r.path, r.body); code != 400 || msg != FaultPreBoot {
			t.Errorf("pre-boot %s %s: %d %q, want 400 %q", r.method, r.path, code, msg, FaultPreBoot)
		}
	}
	if code, msg := do("PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 400 || !strings.Contains(msg, "kernel") {
		t.Errorf("InstanceStart without a boot source: %d %q", code, msg)
	}
	if code, msg := do("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`); code != 204 {
		t.Fatalf("boot-source: %d %s", code, msg)
	}
	if code, msg := do("PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 204 {
		t.Fatalf("InstanceStart: %d %s", code, msg)
	}
	for _, r := range []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PATCH", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PUT", "/boot-source", `{"kernel_image_path":"` + kernel + `"}`},
		{"PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"` + disk + `","is_root_device":true,"is_read_only":false}`},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/tmp/never"}`},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
	} {
		if code, msg := do(r.method, r.path, r.body); code != 400 || msg != FaultPostBoot {
			t.Errorf("post-boot %s %s: %d %q, want 400 %q", r.method, r.path, code, msg, FaultPostBoot)
		}
	}
	// Allowed after boot.
	if code, msg := do("PATCH", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"`+disk+`"}`); code != 204 {
		t.Errorf("post-boot PATCH /drives: %d %q", code, msg)
	}
	for _, r := range s.Requests() {
		if r.Violation != "" {
			t.Errorf("state rules are faults, not spec violations: %s", r.Violation)
		}
	}
}

// Firecracker-like semantic faults beyond the schema.
func TestSemanticFaults(t *testing.T) {
	_, disk := bootFiles(t)
	s := NewServer(loadSpec(t))
	do := serve(t, s)
	for _, r := range []struct{ path, body, want string }{
		{"/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "kernel file cannot be opened"},
		{"/drives/rootfs", `{"drive_id":"other","path_on_host":"` + disk + `","is_root_device":true,"is_read_only":false}`, "does not match"},
		{"/drives/rootfs", `{"drive_id":"rootfs","path_on_host":"/nonexistent","is_root_device":true,"is_read_only":false}`, "backing file"},
		{"/logger", `{"log_path":"/nonexistent/fc.log"}`, "Failed to open target file"},
		{"/machine-config", `{"vcpu_count":1,"mem_size_mib":0}`, "memory size"},
	} {
		if code, msg := do("PUT", r.path, r.body); code != 400 || !strings.Contains(msg, r.want) {
			t.Errorf("PUT %s: %d %q, want a fault with %q", r.path, code, msg, r.want)
		}
	}
	// A vsock socket file left behind makes PUT /vsock fail.
	stale := filepath.Join(t.TempDir(), "v.sock")
	if err := os.WriteFile(stale, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, msg := do("PUT", "/vsock", `{"guest_cid":3,"uds_path":"`+stale+`"}`); code != 400 || !strings.Contains(msg, "Vsock") {
		t.Errorf("stale vsock: %d %q", code, msg)
	}
}

func TestInjectedFault(t *testing.T) {
	s := NewServer(loadSpec(t))
	s.Faults = map[string]string{"PUT /entropy": InjectedFault("PUT /entropy"), "InstanceStart": "boom"}
	do := serve(t, s)
	if code, msg := do("PUT", "/entropy", `{}`); code != 400 || msg != "injected fault at PUT /entropy" {
		t.Fatalf("got %d %q", code, msg)
	}
	if code, msg := do("PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 400 || msg != "boom" {
		t.Fatalf("got %d %q", code, msg)
	}
	// A request that violates the spec is a violation even when a fault is
	// injected for it.
	if code, _ := do("PUT", "/entropy", `{"bogus":1}`); code != 400 || s.Requests()[2].Violation == "" {
		t.Fatalf("violation not recorded: %d %+v", code, s.Requests()[2])
	}
}
