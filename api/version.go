package api

// APIVersionHeader carries the API version the sender speaks: every client
// request sets it to Version, and the daemon sets it on every answer. A
// daemon refuses a request whose version differs from its own (class
// failed_precondition, naming both versions), and a client refuses an answer
// that does, so a mismatch is a clear error, never a decoding one.
const APIVersionHeader = "Banger-API-Version"

// VersionInfo is one program's build (GET /v1/version answers the daemon's).
type VersionInfo struct {
	Version    string `json:"version"`     // e.g. "v0.3.0", or "dev"
	Commit     string `json:"commit"`      // git commit, "-dirty" when built from a modified tree; "" when unknown
	APIVersion string `json:"api_version"` // the API it speaks: Version
	GoVersion  string `json:"go_version"`  // the Go toolchain it was built with
}

// Versions is what `banger version -o json` prints. Daemon is null when
// the daemon could not be asked, and DaemonError says why.
type Versions struct {
	Client      VersionInfo  `json:"client"`
	Daemon      *VersionInfo `json:"daemon"`
	DaemonError string       `json:"daemon_error,omitempty"`
}
