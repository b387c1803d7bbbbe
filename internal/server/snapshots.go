package server

import (
	"encoding/json"
	"net/http"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/model"
)

// snapshotRoutes are pause, resume, snapshots and restore (issue 12).
func (s *server) snapshotRoutes(mux *http.ServeMux, p string) {
	mux.HandleFunc("POST "+p+"/vms/{ref}/pause", s.pauseVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/resume", s.resumeVM)
	mux.HandleFunc("POST "+p+"/vms/{ref}/snapshots", s.createSnapshot)
	mux.HandleFunc("POST "+p+"/vms/{ref}/restore", s.restoreVM)
	mux.HandleFunc("GET "+p+"/snapshots", s.listSnapshots)
	mux.HandleFunc("GET "+p+"/snapshots/{ref}", s.getSnapshot)
	mux.HandleFunc("DELETE "+p+"/snapshots/{ref}", s.deleteSnapshot)
	mux.HandleFunc("POST "+p+"/vms/{ref}/fork", s.forkVM)
	mux.HandleFunc("POST "+p+"/images/{ref}/warm", s.warmImage)
	mux.HandleFunc("POST "+p+"/vms/{ref}/reidentify", s.reidentifyVM)
}

func (s *server) reidentifyVM(w http.ResponseWriter, r *http.Request) {
	var req api.ReidentifyRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.ReidentifyVM(r.Context(), r.PathValue("ref"), daemon.ReidentifyOptions{NewIP: req.NewIP})
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) forkVM(w http.ResponseWriter, r *http.Request) {
	var req api.ForkVMRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.ForkVM(r.Context(), r.PathValue("ref"), req)
	s.vmResult(w, r, v, err, http.StatusCreated)
}

func (s *server) warmImage(w http.ResponseWriter, r *http.Request) {
	var req api.WarmImageRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	sn, err := s.svc.WarmImage(r.Context(), r.PathValue("ref"), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.toSnapshot(r, sn))
}

func (s *server) pauseVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.svc.PauseVM(r.Context(), r.PathValue("ref"))
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) resumeVM(w http.ResponseWriter, r *http.Request) {
	v, err := s.svc.ResumeVM(r.Context(), r.PathValue("ref"))
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) restoreVM(w http.ResponseWriter, r *http.Request) {
	var req api.RestoreRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	v, err := s.svc.RestoreVM(r.Context(), r.PathValue("ref"), req.Snapshot)
	s.vmResult(w, r, v, err, http.StatusOK)
}

func (s *server) createSnapshot(w http.ResponseWriter, r *http.Request) {
	var req api.CreateSnapshotRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	sn, err := s.svc.CreateSnapshot(r.Context(), r.PathValue("ref"), daemon.SnapshotOptions{Name: req.Name, Stop: req.Stop})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.toSnapshot(r, sn))
}

func (s *server) listSnapshots(w http.ResponseWriter, r *http.Request) {
	sns, err := s.svc.ListSnapshots(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Snapshot, 0, len(sns))
	for _, sn := range sns {
		a := s.toSnapshot(r, sn)
		a.Meta = nil // on show only
		out = append(out, a)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) getSnapshot(w http.ResponseWriter, r *http.Request) {
	sn, err := s.svc.GetSnapshot(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toSnapshot(r, sn))
}

func (s *server) deleteSnapshot(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.DeleteSnapshot(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *server) toSnapshot(r *http.Request, sn *model.Snapshot) api.Snapshot {
	out := api.Snapshot{ID: sn.ID, Name: sn.Name, VMID: sn.VMID, VMName: sn.VMName, ImageID: sn.ImageID,
		VMM: sn.VMM, VCPUs: sn.VCPUs, MemoryMiB: sn.MemoryMiB, Kernel: sn.Kernel, Dir: sn.Dir, SizeBytes: sn.SizeBytes,
		CreatedAt: sn.CreatedAt, Kind: sn.Kind}
	if len(sn.Meta) > 0 {
		out.Meta = json.RawMessage(sn.Meta)
	}
	out.Image, _ = s.svc.ImageName(r.Context(), sn.ImageID) // the image is kept while the snapshot is
	return out
}
