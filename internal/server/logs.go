package server

import (
	"errors"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/banger-vm/banger/internal/logcap"
)

// vmLogs streams a VM's log (console and VMM output: its rotated half
// vm.log.1, then vm.log; see logcap.OpenReader). With follow=1
// it keeps streaming what is appended until the VM stops or the client
// goes away.
func (s *server) vmLogs(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	v, err := s.svc.GetVM(ctx, r.PathValue("ref"))
	if err != nil {
		writeError(w, err)
		return
	}
	follow := r.URL.Query().Get("follow") == "1"
	f, err := logcap.OpenReader(v.LogPath)
	if errors.Is(err, os.ErrNotExist) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusOK) // never started: an empty log
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	fl, _ := w.(http.Flusher)
	buf := make([]byte, 64<<10)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			s.log.Warn("reading vm log", "vm", v.Name, "error", err)
			return
		}
		if !follow {
			return
		}
		if fl != nil {
			fl.Flush()
		}
		if !s.svc.LogMayGrow(ctx, v.ID) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}
