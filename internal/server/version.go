package server

import (
	"net/http"
	"runtime"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/version"
)

// versionInfo is this daemon's build.
func versionInfo() api.VersionInfo {
	v := version.Get()
	return api.VersionInfo{Version: v.Version, Commit: v.Commit, APIVersion: api.Version, GoVersion: runtime.Version()}
}

// version answers GET /v1/version.
func (s *server) version(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, versionInfo())
}

// checkAPIVersion stamps every answer with the daemon's API version and
// refuses a request from a client that speaks another one. A request without
// the header (curl, an older client) is served.
func checkAPIVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(api.APIVersionHeader, api.Version)
		if got := r.Header.Get(api.APIVersionHeader); got != "" && got != api.Version {
			writeError(w, errdefs.FailedPrecondition("this client speaks API %s but the daemon (banger %s) speaks API %s (hint: use the banger CLI of the daemon's version, or restart the daemon from the new binary; `banger version` shows both)",
				got, versionInfo().Version, api.Version))
			return
		}
		next.ServeHTTP(w, r)
	})
}
