package server

import (
	"encoding/json"
	"net/http"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/model"
)

func toImage(im *model.Image, users []string) api.Image {
	out := api.Image{ID: im.ID, Name: im.Name, KernelPath: im.KernelPath, InitrdPath: im.InitrdPath,
		RootfsPath: im.RootfsPath, RootfsBytes: im.RootfsBytes, Cmdline: im.Cmdline, CreatedAt: im.CreatedAt, UsedBy: users}
	if len(im.Manifest) > 0 {
		out.Manifest = json.RawMessage(im.Manifest)
	}
	return out
}

func (s *server) listImages(w http.ResponseWriter, r *http.Request) {
	ims, err := s.svc.ListImages(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := make([]api.Image, 0, len(ims))
	for _, im := range ims {
		out = append(out, toImage(im, nil))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) importImage(w http.ResponseWriter, r *http.Request) {
	var req api.ImportImageRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	im, err := s.svc.ImportImage(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, toImage(im, nil))
}

func (s *server) getImage(w http.ResponseWriter, r *http.Request) {
	im, users, err := s.svc.GetImage(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, toImage(im, users))
}

func (s *server) deleteImage(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.DeleteImage(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
