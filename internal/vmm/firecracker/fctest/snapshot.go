package fctest

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
)

// Firecracker's answers to snapshot requests in the wrong state.
const (
	// FaultLoadAfterConfig: PUT /snapshot/load after a boot-specific
	// resource was configured (the specification: "Only accepted on a
	// fresh Firecracker process (before configuring any resource other
	// than the Logger and Metrics)").
	FaultLoadAfterConfig = "Loading a microVM snapshot not allowed after configuring boot-specific resources."
	// FaultNotPaused: PUT /snapshot/create while the VM runs
	// (snapshot-support.md: "Prerequisites: The microVM is Paused").
	FaultNotPaused = "Create snapshot error: Cannot save the microVM state: the microVM is not paused."
)

// Contents the double writes into the snapshot files it creates, and
// checks in the files it is asked to load.
var (
	SnapshotStateContent  = []byte("fctest microvm state\n")
	SnapshotMemoryContent = []byte("fctest guest memory\n")
)

// snapState is the double's model of the VM's run state for snapshots.
type snapState struct {
	configured bool // a boot-specific resource was configured
	paused     bool
	restored   bool // the VM was loaded from a snapshot
}

// handleSnapshot answers what snapshots change in Firecracker's behaviour:
// whether load is still allowed, pause and resume, create only when
// paused, load of the files create wrote, and the state GET / reports. It
// runs after the pre-boot and post-boot checks; done says it answered.
func (s *Server) handleSnapshot(op string, body map[string]any) (a answer, done bool) {
	str := func(m map[string]any, k string) string { v, _ := m[k].(string); return v }
	switch op {
	case "putLogger", "putMetrics":
		return a, false
	case "describeInstance":
		if !s.started {
			return a, false
		}
		state := "Running"
		if s.snap.paused {
			state = "Paused"
		}
		return answer{http.StatusOK, map[string]string{"app_name": "Firecracker", "id": s.ID, "state": state, "vmm_version": s.Spec.Version}}, true
	case "patchVm":
		s.snap.paused = str(body, "state") == "Paused"
		return answer{status: http.StatusNoContent}, true
	case "createSnapshot":
		if !s.snap.paused {
			return fault(FaultNotPaused), true
		}
		if t := str(body, "snapshot_type"); t != "" && t != "Full" {
			return fault("not modelled by the test double: snapshot_type " + t), true
		}
		for _, f := range []struct {
			path    string
			content []byte
		}{{str(body, "snapshot_path"), SnapshotStateContent}, {str(body, "mem_file_path"), SnapshotMemoryContent}} {
			if err := s.create(f.path, f.content); err != nil {
				return fault("Create snapshot error: " + err.Error()), true
			}
		}
		return answer{status: http.StatusNoContent}, true
	case "loadSnapshot":
		if s.snap.configured {
			return fault(FaultLoadAfterConfig), true
		}
		mem, _ := body["mem_backend"].(map[string]any)
		if (mem == nil) == (str(body, "mem_file_path") == "") {
			return fault("Load snapshot error: exactly one of mem_backend and mem_file_path is needed."), true
		}
		memPath := str(body, "mem_file_path")
		if mem != nil {
			if t := str(mem, "backend_type"); t != "File" {
				return fault("not modelled by the test double: backend_type " + t), true
			}
			memPath = str(mem, "backend_path")
		}
		if err := s.check(str(body, "snapshot_path"), SnapshotStateContent); err != nil {
			return fault("Load snapshot error: Cannot load the microVM state: " + err.Error()), true
		}
		if err := s.check(memPath, SnapshotMemoryContent); err != nil {
			return fault("Load snapshot error: Cannot load the guest memory: " + err.Error()), true
		}
		s.started, s.snap.restored = true, true
		resume, _ := body["resume_vm"].(bool)
		s.snap.paused = !resume
		return answer{status: http.StatusNoContent}, true
	}
	if !s.started && preBootOnly[op] {
		s.snap.configured = true
	}
	return a, false
}

// create writes a snapshot file as the (jailed) Firecracker would: as its
// user, in a directory it can write to.
func (s *Server) create(p string, content []byte) error {
	if p == "" {
		return errors.New("empty path")
	}
	if err := s.access(filepath.Dir(p), true); err != nil && s.UID >= 0 {
		return err
	}
	host := s.resolve(p)
	if err := os.WriteFile(host, content, 0o600); err != nil {
		return err
	}
	if s.UID > 0 {
		return os.Chown(host, s.UID, s.GID)
	}
	return nil
}

// check reads a snapshot file as the (jailed) Firecracker would and
// checks that it is the one the double wrote.
func (s *Server) check(p string, want []byte) error {
	if err := s.access(p, false); err != nil {
		return err
	}
	got, err := os.ReadFile(s.resolve(p))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s is not a snapshot file of this kind", p)
	}
	return nil
}
