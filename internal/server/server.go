// Package server exposes the daemon's service as HTTP+JSON on a unix
// socket. Error classes become HTTP statuses here and nowhere else.
package server

import (
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/network"
	"github.com/banger-vm/banger/internal/version"
)

type server struct {
	svc     *daemon.Service
	log     *slog.Logger
	hostKey agentHostKey // guest agent upgrades (issue 10)
}

// Handler returns the API's routes.
func Handler(svc *daemon.Service, log *slog.Logger) http.Handler {
	s := &server{svc: svc, log: log}
	mux := http.NewServeMux()
	p := "/" + api.Version
	mux.HandleFunc("GET "+p+"/info", s.info)
	mux.HandleFunc("GET "+p+"/version", s.version)
	mux.HandleFunc("GET "+p+"/vms", s.listVMs)
	mux.HandleFunc("POST "+p+"/vms", s.createVM)
	mux.HandleFunc("GET "+p+"/vms/{ref}", s.getVM)
	mux.HandleFunc("DELETE "+p+"/vms/{ref}", s.deleteVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/start", s.startVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/stop", s.stopVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/restart", s.restartVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/kill", s.killVM)
	mux.HandleFunc("GET "+p+"/vms/{ref}/ops", s.vmOps)
	mux.HandleFunc("GET "+p+"/vms/{ref}/logs", s.vmLogs)
	mux.HandleFunc("GET "+p+"/vms/{ref}/ssh", s.vmSSH)
	s.snapshotRoutes(mux, p)
	mux.HandleFunc("GET "+p+"/vms/{ref}/agent", s.vmAgent)
	mux.HandleFunc("PUT "+p+"/vms/{ref}/network", s.setVMNetwork)
	mux.HandleFunc("GET "+p+"/images", s.listImages)
	mux.HandleFunc("POST "+p+"/images/import", s.importImage)
	mux.HandleFunc("POST "+p+"/images/build", s.buildImage)
	mux.HandleFunc("GET "+p+"/images/{ref}", s.getImage)
	mux.HandleFunc("DELETE "+p+"/images/{ref}", s.deleteImage)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errdefs.NotFound("no API route %s %s (hint: client and daemon versions may differ)", r.Method, r.URL.Path))
	})
	return checkAPIVersion(waitForStartup(svc, mux))
}

// StatusOf maps an error class to an HTTP status.
func StatusOf(c errdefs.Class) int {
	switch c {
	case errdefs.ClassNotFound:
		return http.StatusNotFound
	case errdefs.ClassAlreadyExists, errdefs.ClassConflict:
		return http.StatusConflict
	case errdefs.ClassInvalidArgument:
		return http.StatusBadRequest
	case errdefs.ClassFailedPrecondition:
		return http.StatusPreconditionFailed
	case errdefs.ClassUnavailable:
		return http.StatusServiceUnavailable
	case errdefs.ClassNotSupported:
		return http.StatusNotImplemented
	case errdefs.ClassOutOfSpace:
		return http.StatusInsufficientStorage
	case errdefs.ClassPermissionDenied:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, err error) {
	c := errdefs.ClassOf(err)
	if c == errdefs.ClassInternal && outOfSpace(err) {
		c = errdefs.ClassOutOfSpace
	}
	writeJSON(w, StatusOf(c), api.ErrorResponse{Error: api.Error{Class: string(c), Message: err.Error()}})
}

func (s *server) info(w http.ResponseWriter, r *http.Request) {
	l := s.svc.Layout()
	out := api.Info{Version: version.Get().Version, StateDir: l.StateDir, RuntimeDir: l.RuntimeDir, DefaultVMM: s.svc.DefaultVMM()}
	for _, d := range s.svc.Drivers(r.Context()) {
		out.Drivers = append(out.Drivers, api.Driver{Kind: d.Kind, Available: d.Available, Reason: d.Reason,
			Binary: d.Binary, Version: d.Version, Accel: d.Accel, Features: map[string]bool{"vsock": d.Features.Vsock}})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := s.svc.ListVMs(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.VMSummary, len(vms))
	for i, v := range vms {
		out[i] = api.VMSummary{ID: v.ID, Name: v.Name, State: string(v.State), VMM: v.VMM, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
			GuestIP: v.GuestIP, Image: v.Image, Runtime: api.SummaryRuntime{PID: v.PID}, OwnerUID: v.OwnerUID}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.CreateVM(r.Context(), req)
	s.vmResult(w, r, v, err, http.StatusCreated)
}

func (s *server) getVM(w http.ResponseWriter, r *http.Request) {
	view, err := s.svc.ShowVM(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toView(view))
}

func (s *server) startVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.svc.StartVM(r.Context(), r.PathValue("ref"))
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) stopVM(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.StopVM(r.Context(), r.PathValue("ref"), daemon.StopOptions{Timeout: seconds(req.TimeoutSeconds), Force: req.Force})
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) restartVM(w http.ResponseWriter, r *http.Request) {
	var req api.StopRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.RestartVM(r.Context(), r.PathValue("ref"), daemon.StopOptions{Timeout: seconds(req.TimeoutSeconds), Force: req.Force})
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) killVM(w http.ResponseWriter, r *http.Request) {
	var req api.KillRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.KillVM(r.Context(), r.PathValue("ref"), req.Signal)
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) deleteVM(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.DeleteVM(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) vmOps(w http.ResponseWriter, r *http.Request) {
	limit := 0
	if q := r.URL.Query().Get("limit"); q != "" {
		n, err := strconv.Atoi(q)
		if err != nil || n < 0 {
			writeError(w, errdefs.InvalidArgument("limit %q is not a non-negative number", q))
			return
		}
		limit = n
	}
	ops, err := s.svc.Operations(r.Context(), r.PathValue("ref"), limit)
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Operation, 0, len(ops))
	for _, op := range ops {
		out = append(out, toOp(op))
	}
	writeJSON(w, http.StatusOK, out)
}

// vmResult writes v's view (the error wins) with the given status.
func (s *server) vmResult(w http.ResponseWriter, r *http.Request, v *model.VM, err error, status int) {
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, status, toView(s.svc.View(r.Context(), v)))
}

// toView is a VM as `vm show` sees it: with its image's name, its last
// operation and the driver features it lacks.
func toView(view *daemon.VMView) api.VM {
	out := toVM(view.VM)
	out.Image = view.Image
	if view.LastOperation != nil {
		op := toOp(view.LastOperation)
		out.LastOperation = &op
	}
	out.Unsupported = view.Unsupported
	out.Agent = view.Agent
	if o := view.Origin; o != nil {
		out.Origin = &api.Origin{Snapshot: o.SnapshotName, SnapshotID: o.SnapshotID, Warm: o.Warm, Pending: o.Pending}
	}
	return out
}

func toVM(v *model.VM) api.VM {
	out := api.VM{ID: v.ID, Name: v.Name, ImageID: v.ImageID, VCPUs: v.VCPUs, MemoryMiB: v.MemoryMiB,
		DiskBytes: v.DiskBytes, VMM: v.VMM, VMMReason: v.VMMReason, State: string(v.State), GuestIP: v.GuestIP, VMDir: v.VMDir,
		LogPath: v.LogPath, LastError: v.LastError, HostKey: v.HostKey, CreatedAt: v.CreatedAt, UpdatedAt: v.UpdatedAt,
		Runtime: api.Runtime{PID: v.Runtime.PID, ControlSocket: v.Runtime.ControlSocket, VsockPath: v.Runtime.VsockPath,
			VsockCID: v.Runtime.VsockCID, Tap: v.Runtime.Tap, Accel: v.Runtime.Accel, StartedAt: v.Runtime.StartedAt},
		DiskStrategy: v.DiskStrategy, DiskReason: v.DiskReason, MAC: network.MACFor(v.ID)}
	for _, p := range v.Ports {
		out.Ports = append(out.Ports, api.PortMapping{HostPort: p.HostPort, GuestPort: p.GuestPort, Proto: p.Proto})
	}
	out.OwnerUID = v.OwnerUID
	if e := v.LastExit; e != nil {
		out.LastExit = &api.Exit{Known: e.Known, Code: e.Code, Signal: e.Signal, At: e.At, Reason: e.Reason(), LogTail: e.LogTail}
	}
	out.Network = toNetworkPolicy(v.NetPolicy)
	return out
}

func (s *server) vmSSH(w http.ResponseWriter, r *http.Request) {
	v, user, err := s.svc.SSHTarget(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	l := s.svc.Layout()
	writeJSON(w, http.StatusOK, api.SSHTarget{Name: v.Name, Address: net.JoinHostPort(v.GuestIP, "22"), User: user,
		KeyPath: l.ClientKey(), KnownHosts: l.KnownHosts(), TOFU: v.HostKey == ""})
}

func toOp(op *model.Operation) api.Operation {
	out := api.Operation{ID: op.ID, Kind: op.Kind, Status: string(op.Status), Error: op.Error,
		StartedAt: op.StartedAt, EndedAt: op.EndedAt, Stages: make([]api.Stage, 0, len(op.Stages))}
	if !op.EndedAt.IsZero() {
		out.DurationMS = op.EndedAt.Sub(op.StartedAt).Milliseconds()
	}
	for _, st := range op.Stages {
		out.Stages = append(out.Stages, api.Stage{Name: st.Name, Status: st.Status, Detail: st.Detail, At: st.At})
	}
	return out
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
