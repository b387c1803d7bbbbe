// Package version says which build of banger is running: a version string
// and the commit it was built from. Both can be set at link time:
//
//	go build -ldflags "-X github.com/banger-vm/banger/internal/version.version=v0.3.0 \
//	    -X github.com/banger-vm/banger/internal/version.commit=$(git rev-parse HEAD)" ./cmd/banger
//
// Without -ldflags the commit comes from the VCS stamp `go build` records
// (vcs.revision, with "-dirty" when the tree had changes) and the version is
// the module's version, or "dev".
package version

import "runtime/debug"

// Set with -ldflags -X; empty means "read the build info".
var (
	version string
	commit  string
)

// Info is one build's identity.
type Info struct {
	Version string // e.g. "v0.3.0", or "dev"
	Commit  string // the full commit hash, "-dirty" appended for a modified tree; "" when unknown
}

// Get returns this binary's version and commit.
func Get() Info {
	info := Info{Version: version, Commit: commit}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		fromBuildInfo(&info, bi)
	}
	if info.Version == "" {
		info.Version = "dev"
	}
	return info
}

// fromBuildInfo fills what -ldflags left empty from the build's stamp.
func fromBuildInfo(info *Info, bi *debug.BuildInfo) {
	if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = bi.Main.Version
	}
	if info.Commit != "" {
		return
	}
	var rev string
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev != "" && dirty {
		rev += "-dirty"
	}
	info.Commit = rev
}
