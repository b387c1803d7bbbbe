package server

import (
	"net/http"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/daemon"
)

// answeredDuringStartup are the requests served while the daemon still
// recovers (daemon.Service.Begin): they change nothing and read no record
// recovery is about to change in a way that matters to them (a list shows
// the records as they are; each VM's record changes in one transaction).
// Every other request waits for the recovery: a VM shown, started or
// deleted is one reconcile has already brought in line with the host.
var answeredDuringStartup = map[string]bool{
	"/" + api.Version + "/version": true,
	"/" + api.Version + "/info":    true,
	"/" + api.Version + "/vms":     true,
	"/" + api.Version + "/images":  true,
}

// waitForStartup holds every request but answeredDuringStartup's GETs until
// svc's start-up recovery is done; a request whose client goes away, or a
// failed recovery, gets an unavailable error.
func waitForStartup(svc *daemon.Service, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || !answeredDuringStartup[r.URL.Path] {
			if err := svc.WaitStarted(r.Context()); err != nil {
				writeError(w, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}
