package fctest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// Request is one request the double answered.
type Request struct {
	Method string          `json:"method"`
	Path   string          `json:"path"`
	Body   json.RawMessage `json:"body,omitempty"`
	Status int             `json:"status"`
	// Fault is the fault_message of a non-2xx answer.
	Fault string `json:"fault,omitempty"`
	// Violation says why the specification rejects the request (or the
	// double's answer). A test fails on any.
	Violation string `json:"violation,omitempty"`
}

// Key names a request for fault injection: "PUT /boot-source", or the
// action type for PUT /actions ("InstanceStart", "SendCtrlAltDel").
func Key(method, path string, body []byte) string {
	if method == http.MethodPut && path == "/actions" {
		var a struct {
			ActionType string `json:"action_type"`
		}
		if json.Unmarshal(body, &a) == nil && a.ActionType != "" {
			return a.ActionType
		}
	}
	return method + " " + path
}

// Messages Firecracker answers for requests made in the wrong state
// (VmmActionError's OperationNotSupportedPostBoot/PreBoot).
const (
	FaultPostBoot = "The requested operation is not supported after starting the microVM."
	FaultPreBoot  = "The requested operation is not supported before starting the microVM."
)

// preBootOnly are the operations Firecracker refuses once the guest runs:
// those the specification marks "Pre-boot only" and, from Firecracker's
// RuntimeApiController, the logger, metrics and serial configuration.
// InstanceStart (PUT /actions) is handled with the actions.
var preBootOnly = map[string]bool{
	"putGuestBootSource": true, "putLogger": true, "putMetrics": true, "putSerialDevice": true,
	"putGuestDriveByID": true, "putGuestPmemByID": true, "putGuestNetworkInterfaceByID": true,
	"loadSnapshot": true, "putCpuConfiguration": true, "putBalloon": true, "putGuestVsock": true,
	"putMmdsConfig": true, "putEntropyDevice": true, "putMemoryHotplug": true,
	"putMachineConfiguration": true, "patchMachineConfiguration": true,
}

// postBootOnly are the operations Firecracker refuses before InstanceStart
// (the PATCH updates, snapshots, pause/resume, balloon statistics and
// hinting, hotplug resizing). The specification says PATCH /balloon works
// "before or after machine startup"; Firecracker's PrebootApiController
// refuses it, and the double follows Firecracker.
var postBootOnly = map[string]bool{
	"patchGuestDriveByID": true, "patchGuestNetworkInterfaceByID": true, "patchGuestPmemByID": true,
	"createSnapshot": true, "patchVm": true, "describeBalloonStats": true, "patchBalloon": true,
	"patchBalloonStatsInterval": true, "startBalloonHinting": true, "describeBalloonHinting": true,
	"stopBalloonHinting": true, "patchMemoryHotplug": true, "getMemoryHotplug": true,
}

// Server is the API double. Configure its exported fields before serving.
type Server struct {
	Spec    *Spec
	ID      string // instance id (--id)
	Version string // answered by GET /version; default Spec.Version
	// Faults maps a Key to the fault_message answered (400) instead of
	// handling the request.
	Faults map[string]string
	// Root is the jail root when the double plays a jailed Firecracker:
	// paths in requests resolve under it. Empty: host paths.
	Root string
	// UID and GID are the jailed user whose access to files is checked; -1
	// checks by opening the file as the double's own user.
	UID, GID int
	// OnRecord is called with each request, after it is handled and before
	// the answer is sent.
	OnRecord func(Request)
	// OnStart runs after InstanceStart succeeds; OnCtrlAltDel after
	// SendCtrlAltDel is answered.
	OnStart, OnCtrlAltDel func()

	mu       sync.Mutex
	started  bool
	boot     bool // a boot source is configured
	machine  map[string]any
	vsock    net.Listener
	requests []Request
	snap     snapState // snapshot.go
}

// NewServer returns a double in the pre-boot state.
func NewServer(spec *Spec) *Server {
	return &Server{Spec: spec, ID: "anonymous-instance", UID: -1, GID: -1,
		machine: map[string]any{"vcpu_count": 1, "mem_size_mib": 128, "smt": false, "track_dirty_pages": false}}
}

// Requests returns what the double was asked, in order.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Request(nil), s.requests...)
}

// Close releases the vsock socket, leaving its file as Firecracker does.
func (s *Server) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.vsock != nil {
		s.vsock.Close()
		s.vsock = nil
	}
}

// answer is a response before it is written.
type answer struct {
	status int
	body   any
}

func fault(msg string) answer {
	return answer{http.StatusBadRequest, map[string]string{"fault_message": msg}}
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Firecracker handles one request at a time.
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	rec := Request{Method: r.Method, Path: r.URL.Path}
	if len(raw) > 0 {
		if json.Valid(raw) {
			rec.Body = json.RawMessage(raw)
		} else {
			rec.Body, _ = json.Marshal(string(raw))
		}
	}
	r.Body = io.NopCloser(bytes.NewReader(raw))
	in, err := s.Spec.Route(r.Context(), r)
	var a answer
	if err != nil {
		rec.Violation = err.Error()
		// Firecracker's own answer to a request it cannot parse.
		a = fault("Invalid request: " + err.Error())
	} else if msg, ok := s.Faults[Key(r.Method, r.URL.Path, raw)]; ok {
		a = fault(msg)
	} else {
		a = s.handle(in.Route.Operation.OperationID, in.PathParams, raw)
	}
	var body []byte
	if a.body != nil {
		body, _ = json.Marshal(a.body)
		w.Header().Set("Content-Type", "application/json")
	}
	if in != nil {
		if err := s.Spec.CheckAnswer(r.Context(), in, a.status, w.Header(), body); err != nil && rec.Violation == "" {
			rec.Violation = "the double's own " + err.Error()
		}
	}
	rec.Status = a.status
	if a.status/100 != 2 {
		var f struct {
			FaultMessage string `json:"fault_message"`
		}
		_ = json.Unmarshal(body, &f)
		rec.Fault = f.FaultMessage
	}
	s.requests = append(s.requests, rec)
	if s.OnRecord != nil {
		s.OnRecord(rec)
	}
	w.WriteHeader(a.status)
	if body != nil {
		_, _ = w.Write(body)
	}
	if rec.Status == http.StatusNoContent && Key(r.Method, r.URL.Path, raw) == "SendCtrlAltDel" && s.OnCtrlAltDel != nil {
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go s.OnCtrlAltDel()
	}
}

// handle answers a request the specification accepts, as Firecracker would.
func (s *Server) handle(op string, params map[string]string, raw []byte) answer {
	ok := answer{status: http.StatusNoContent}
	if s.started && preBootOnly[op] {
		return fault(FaultPostBoot)
	}
	if !s.started && postBootOnly[op] {
		return fault(FaultPreBoot)
	}
	var body map[string]any
	_ = json.Unmarshal(raw, &body)
	str := func(k string) string { v, _ := body[k].(string); return v }
	if a, done := s.handleSnapshot(op, body); done {
		return a
	}
	switch op {
	case "getFirecrackerVersion":
		v := s.Version
		if v == "" {
			v = s.Spec.Version
		}
		return answer{http.StatusOK, map[string]string{"firecracker_version": v}}
	case "describeInstance":
		state := "Not started"
		if s.started {
			state = "Running"
		}
		return answer{http.StatusOK, map[string]string{"app_name": "Firecracker", "id": s.ID, "state": state, "vmm_version": s.Spec.Version}}
	case "getMachineConfiguration":
		return answer{http.StatusOK, s.machine}
	case "putMachineConfiguration":
		if n, _ := body["mem_size_mib"].(float64); n < 1 {
			return fault("The memory size (MiB) is invalid.")
		}
		s.machine = body
		return ok
	case "putLogger":
		// Firecracker opens log_path without creating it.
		if p := str("log_path"); p != "" {
			if err := s.access(p, true); err != nil {
				return fault("Logger error: Failed to open target file: " + err.Error())
			}
		}
		return ok
	case "putGuestBootSource":
		if err := s.access(str("kernel_image_path"), false); err != nil {
			return fault("Boot source error: The kernel file cannot be opened: " + err.Error())
		}
		if p := str("initrd_path"); p != "" {
			if err := s.access(p, false); err != nil {
				return fault("Boot source error: The initrd file cannot be opened: " + err.Error())
			}
		}
		s.boot = true
		return ok
	case "putGuestDriveByID":
		if id := str("drive_id"); id != params["drive_id"] {
			return fault(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", params["drive_id"], id))
		}
		if p := str("path_on_host"); p != "" {
			ro, _ := body["is_read_only"].(bool)
			if err := s.access(p, !ro); err != nil {
				return fault("Drive config error: Unable to open the backing file: " + err.Error())
			}
		}
		return ok
	case "putGuestNetworkInterfaceByID":
		if id := str("iface_id"); id != params["iface_id"] {
			return fault(fmt.Sprintf("The id from the path [%s] does not match the id from the body [%s]!", params["iface_id"], id))
		}
		return ok
	case "putGuestVsock":
		// Firecracker binds uds_path when the device is configured; a file
		// left there by an earlier run makes it fail.
		if s.vsock != nil {
			s.vsock.Close()
		}
		l, err := net.Listen("unix", s.resolve(str("uds_path")))
		if err != nil {
			return fault("Vsock config error: Cannot create backend for vsock device: " + err.Error())
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		s.vsock = l
		return ok
	case "createSyncAction":
		switch str("action_type") {
		case "InstanceStart":
			if s.started {
				return fault(FaultPostBoot)
			}
			if !s.boot {
				return fault("Start microvm error: Cannot start microvm without kernel configuration.")
			}
			s.started = true
			if s.OnStart != nil {
				s.OnStart()
			}
		case "SendCtrlAltDel", "FlushMetrics":
			if !s.started {
				return fault(FaultPreBoot)
			}
		}
		return ok
	}
	if strings.HasPrefix(op, "get") || strings.HasPrefix(op, "describe") {
		return fault("not modelled by the test double: " + op)
	}
	return ok
}

func (s *Server) resolve(p string) string {
	if s.Root == "" {
		return p
	}
	return filepath.Join(s.Root, p)
}

// access checks that the (jailed) Firecracker can open p for reading, and
// writing when write is set.
func (s *Server) access(p string, write bool) error {
	if p == "" {
		return errors.New("empty path")
	}
	host := s.resolve(p)
	if s.UID < 0 {
		flag := os.O_RDONLY
		if write {
			flag = os.O_RDWR
		}
		f, err := os.OpenFile(host, flag, 0)
		if err != nil {
			return err
		}
		return f.Close()
	}
	fi, err := os.Stat(host)
	if err != nil {
		return err
	}
	if s.UID == 0 {
		return nil
	}
	st := fi.Sys().(*syscall.Stat_t)
	perm := uint32(fi.Mode().Perm())
	need := uint32(0o4)
	if write {
		need = 0o6
	}
	var have uint32
	switch {
	case int(st.Uid) == s.UID:
		have = perm >> 6
	case int(st.Gid) == s.GID:
		have = perm >> 3
	default:
		have = perm
	}
	if have&need != need {
		return fmt.Errorf("open %s: permission denied for %d:%d (mode %v, owner %d:%d)", p, s.UID, s.GID, fi.Mode().Perm(), st.Uid, st.Gid)
	}
	return nil
}
