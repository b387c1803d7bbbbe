package version

import (
	"runtime/debug"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	bi := &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
		{Key: "vcs.revision", Value: "4bfbb33aa"}, {Key: "vcs.modified", Value: "true"},
	}}
	var got Info
	fromBuildInfo(&got, bi)
	if got.Commit != "4bfbb33aa-dirty" || got.Version != "" {
		t.Fatalf("devel build: %+v", got)
	}

	bi.Main.Version = "v1.2.3"
	bi.Settings[1].Value = "false"
	got = Info{}
	fromBuildInfo(&got, bi)
	if got != (Info{Version: "v1.2.3", Commit: "4bfbb33aa"}) {
		t.Fatalf("module build: %+v", got)
	}

	// What -ldflags set wins over the stamp.
	got = Info{Version: "v9", Commit: "cafe"}
	fromBuildInfo(&got, bi)
	if got != (Info{Version: "v9", Commit: "cafe"}) {
		t.Fatalf("ldflags overridden: %+v", got)
	}
}

func TestGetNeverEmptyVersion(t *testing.T) {
	if Get().Version == "" {
		t.Fatal("empty version")
	}
}
