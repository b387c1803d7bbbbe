package server

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/internal/daemon"
	"github.com/banger-vm/banger/internal/layout"
	"github.com/banger-vm/banger/internal/model"
	"github.com/banger-vm/banger/internal/store"
	"github.com/banger-vm/banger/internal/vmm"
	"github.com/banger-vm/banger/internal/vmm/vmmtest"
)

// A stored manifest reaches the client typed; one that does not parse is
// left out with a warning in the daemon's log, and the list and the show
// still answer.
func TestImageManifestIsTypedAndABadOneIsLeftOut(t *testing.T) {
	dir := t.TempDir()
	l := layout.Layout{StateDir: filepath.Join(dir, "state"), RuntimeDir: filepath.Join(dir, "run")}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st, err := store.Open(ctx, l.DBPath())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	svc, err := daemon.New(daemon.Config{Layout: l, Drivers: vmm.Registry{"fake": vmmtest.New()}, DefaultVMM: "fake",
		GracefulTimeout: 5 * time.Second, KillTimeout: 2 * time.Second, Logger: log}, st)
	if err != nil {
		t.Fatal(err)
	}
	good, _ := json.Marshal(api.ImageManifest{FormatVersion: api.ImageManifestVersion, Release: "bookworm",
		Packages: []api.ImagePackage{{Name: "systemd", Version: "252.39-1"}}})
	for _, im := range []*model.Image{
		{ID: "img-good", Name: "good", KernelPath: "/k", RootfsPath: "/r", Manifest: good, CreatedAt: time.Unix(1, 0)},
		{ID: "img-bad", Name: "bad", KernelPath: "/k", RootfsPath: "/r", Manifest: []byte(`{"release": 7`), CreatedAt: time.Unix(2, 0)},
		{ID: "img-none", Name: "none", KernelPath: "/k", RootfsPath: "/r", CreatedAt: time.Unix(3, 0)},
	} {
		if err := st.InsertImage(ctx, im); err != nil {
			t.Fatal(err)
		}
	}
	h := Handler(svc, log)
	get := func(path string, into any) {
		t.Helper()
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/"+api.Version+path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s: %d %s", path, rec.Code, rec.Body.String())
		}
		if err := json.Unmarshal(rec.Body.Bytes(), into); err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
	}
	var list []api.Image
	get("/images", &list)
	byName := map[string]api.Image{}
	for _, im := range list {
		byName[im.Name] = im
	}
	if len(byName) != 3 {
		t.Fatalf("list has %d images, want 3: %+v", len(byName), list)
	}
	if m := byName["good"].Manifest; m == nil || m.Release != "bookworm" || len(m.Packages) != 1 || m.Packages[0].Version != "252.39-1" {
		t.Errorf("good manifest: %+v", m)
	}
	if byName["bad"].Manifest != nil || byName["none"].Manifest != nil {
		t.Errorf("bad or missing manifest reached the client: %+v %+v", byName["bad"].Manifest, byName["none"].Manifest)
	}
	var bad api.Image
	get("/images/bad", &bad)
	if bad.Name != "bad" || bad.Manifest != nil {
		t.Errorf("show bad: %+v", bad)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "image=bad") {
		t.Errorf("no warning names the bad manifest:\n%s", logs.String())
	}
	if strings.Contains(logs.String(), "image=good") {
		t.Errorf("a good manifest was warned about:\n%s", logs.String())
	}
}
