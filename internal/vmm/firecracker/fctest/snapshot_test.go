package fctest

import (
	"os"
	"path/filepath"
	"testing"
)

// TestSnapshotRules: the double enforces what the specification and
// snapshot-support.md state: pause and resume only after boot, snapshot
// create only when paused, snapshot load only on a fresh process (nothing
// but the logger and metrics configured, not booted), and load leaves the
// VM paused unless resume_vm; every such refusal is a fault, not a
// specification violation.
func TestSnapshotRules(t *testing.T) {
	kernel, _ := bootFiles(t)
	dir := t.TempDir()
	state, mem := filepath.Join(dir, "vmstate"), filepath.Join(dir, "mem")
	create := `{"snapshot_type":"Full","snapshot_path":"` + state + `","mem_file_path":"` + mem + `"}`
	load := `{"snapshot_path":"` + state + `","mem_backend":{"backend_type":"File","backend_path":"` + mem + `"},"resume_vm":false}`

	t.Run("create", func(t *testing.T) {
		s := NewServer(loadSpec(t))
		do := serve(t, s)
		if code, msg := do("PUT", "/snapshot/create", create); code != 400 || msg != FaultPreBoot {
			t.Errorf("create before boot: %d %q", code, msg)
		}
		do("PUT", "/boot-source", `{"kernel_image_path":"`+kernel+`"}`)
		if code, msg := do("PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 204 {
			t.Fatalf("InstanceStart: %d %q", code, msg)
		}
		if code, msg := do("PUT", "/snapshot/create", create); code != 400 || msg != FaultNotPaused {
			t.Errorf("create while running: %d %q, want %q", code, msg, FaultNotPaused)
		}
		if _, err := os.Stat(state); !os.IsNotExist(err) {
			t.Fatalf("a refused create wrote %s: %v", state, err)
		}
		if code, msg := do("PATCH", "/vm", `{"state":"Paused"}`); code != 204 {
			t.Fatalf("pause: %d %q", code, msg)
		}
		if code, msg := do("PUT", "/snapshot/create", create); code != 204 {
			t.Fatalf("create while paused: %d %q", code, msg)
		}
		if code, msg := do("PATCH", "/vm", `{"state":"Resumed"}`); code != 204 {
			t.Fatalf("resume: %d %q", code, msg)
		}
		if code, msg := do("PUT", "/snapshot/create", create); code != 400 || msg != FaultNotPaused {
			t.Errorf("create after resume: %d %q", code, msg)
		}
		if code, msg := do("PUT", "/snapshot/load", load); code != 400 || msg != FaultPostBoot {
			t.Errorf("load after boot: %d %q, want %q", code, msg, FaultPostBoot)
		}
		clean(t, s)
	})
	t.Run("load after configuration", func(t *testing.T) {
		s := NewServer(loadSpec(t))
		do := serve(t, s)
		do("PUT", "/logger", `{"level":"Info"}`)
		do("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
		if code, msg := do("PUT", "/snapshot/load", load); code != 400 || msg != FaultLoadAfterConfig {
			t.Errorf("load after machine-config: %d %q, want %q", code, msg, FaultLoadAfterConfig)
		}
		clean(t, s)
	})
	t.Run("load", func(t *testing.T) {
		s := NewServer(loadSpec(t))
		do := serve(t, s)
		do("PUT", "/logger", `{"level":"Info"}`)
		if code, msg := do("PUT", "/snapshot/load", load); code != 204 {
			t.Fatalf("load on a fresh process: %d %q", code, msg)
		}
		// Paused after load: create works, InstanceStart and configuration do not.
		if code, msg := do("PUT", "/actions", `{"action_type":"InstanceStart"}`); code != 400 || msg != FaultPostBoot {
			t.Errorf("InstanceStart after load: %d %q", code, msg)
		}
		if code, msg := do("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`); code != 400 || msg != FaultPostBoot {
			t.Errorf("machine-config after load: %d %q", code, msg)
		}
		if code, msg := do("PATCH", "/vm", `{"state":"Resumed"}`); code != 204 {
			t.Fatalf("resume after load: %d %q", code, msg)
		}
		clean(t, s)
	})
	t.Run("load of a file that is not a snapshot", func(t *testing.T) {
		s := NewServer(loadSpec(t))
		do := serve(t, s)
		bad := `{"snapshot_path":"` + kernel + `","mem_backend":{"backend_type":"File","backend_path":"` + mem + `"}}`
		if code, _ := do("PUT", "/snapshot/load", bad); code != 400 {
			t.Errorf("load of the kernel as a state file: %d", code)
		}
		both := `{"snapshot_path":"` + state + `","mem_file_path":"` + mem + `","mem_backend":{"backend_type":"File","backend_path":"` + mem + `"}}`
		if code, _ := do("PUT", "/snapshot/load", both); code != 400 {
			t.Errorf("load with mem_file_path and mem_backend: %d", code)
		}
		clean(t, s)
	})
}

func clean(t *testing.T, s *Server) {
	t.Helper()
	for _, r := range s.Requests() {
		if r.Violation != "" {
			t.Errorf("%s %s: %s", r.Method, r.Path, r.Violation)
		}
	}
}
