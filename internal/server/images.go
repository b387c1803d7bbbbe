package server

import (
	"encoding/json"
	"net/http"
	"sync"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/image/build"
	"github.com/banger-vm/banger/internal/model"
)

// toImage is the API's view of an image. A stored manifest that does not
// parse is logged and left out: it never fails a list or a show.
func (s *server) toImage(im *model.Image, users []string) api.Image {
	out := api.Image{ID: im.ID, Name: im.Name, KernelPath: im.KernelPath, InitrdPath: im.InitrdPath,
		RootfsPath: im.RootfsPath, RootfsBytes: im.RootfsBytes, Cmdline: im.Cmdline, CreatedAt: im.CreatedAt, UsedBy: users}
	if len(im.Manifest) > 0 {
		var m api.ImageManifest
		if err := json.Unmarshal(im.Manifest, &m); err != nil {
			s.log.Warn("stored image manifest does not parse: left out", "image", im.Name, "err", err)
		} else {
			out.Manifest = &m
		}
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
		out = append(out, s.toImage(im, nil))
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *server) importImage(w http.ResponseWriter, r *http.Request) {
	var req api.ImportImageRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	// The daemon reads the files as root: only root may name them, or a
	// --socket-group member could import files it cannot read itself.
	if uid := peerUID(r.Context()); uid != 0 {
		writeError(w, errdefs.FailedPrecondition("image import reads files as root on the daemon's host: only root may ask for it (peer uid %d) (hint: run banger image import as root)", uid))
		return
	}
	im, err := s.svc.ImportImage(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, s.toImage(im, nil))
}

func (s *server) getImage(w http.ResponseWriter, r *http.Request) {
	im, users, err := s.svc.GetImage(r.Context(), r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, s.toImage(im, users))
}

func (s *server) deleteImage(w http.ResponseWriter, r *http.Request) {
	if err := s.svc.DeleteImage(r.Context(), r.PathValue("ref")); err != nil {
		writeError(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// buildImage streams the build's progress as newline-delimited JSON; the
// last line holds the image or the error. Bad input is answered before the
// stream starts, with a plain error status.
func (s *server) buildImage(w http.ResponseWriter, r *http.Request) {
	var req api.BuildImageRequest
	if err := decode(r, &req); err != nil {
		writeError(w, err)
		return
	}
	spec, err := s.svc.BuildSpec(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	var mu sync.Mutex
	send := func(ev api.BuildEvent) {
		mu.Lock()
		defer mu.Unlock()
		ev.At = time.Now().UTC()
		if enc.Encode(ev) == nil && fl != nil {
			fl.Flush()
		}
	}
	// A client that goes away cancels the build (r.Context()): nothing is
	// registered and nothing is left behind.
	im, err := s.svc.BuildImage(r.Context(), req.Name, spec, func(ev build.Event) {
		send(api.BuildEvent{Stage: ev.Stage, Status: ev.Status, Detail: ev.Detail, Done: ev.Done, Total: ev.Total})
	})
	if err != nil {
		send(api.BuildEvent{Error: &api.Error{Class: string(errdefs.ClassOf(err)), Message: err.Error()}})
		return
	}
	out := s.toImage(im, nil)
	send(api.BuildEvent{Image: &out})
}
