package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// TestBuildSpecRejectsBadInputBeforeWork: every check that can run before
// the long build does, and says what is wrong.
func TestBuildSpecRejectsBadInputBeforeWork(t *testing.T) {
	e := newEnv(t) // has an image named "default"
	cases := []struct {
		req   api.BuildImageRequest
		class error
		says  string
	}{
		{api.BuildImageRequest{}, errdefs.ErrAlreadyExists, `image "default" already exists`},
		{api.BuildImageRequest{Name: "../x"}, errdefs.ErrInvalidArgument, "not valid"},
		{api.BuildImageRequest{Name: "img", Release: "hamm-and-eggs"}, errdefs.ErrInvalidArgument, "hamm-and-eggs"},
		{api.BuildImageRequest{Name: "img", Packages: []string{"ok", "Bad Name;rm"}}, errdefs.ErrInvalidArgument, "Bad Name;rm"},
		{api.BuildImageRequest{Name: "img", SizeBytes: 10 << 20}, errdefs.ErrInvalidArgument, "size"},
	}
	for _, c := range cases {
		_, err := e.svc.BuildSpec(context.Background(), c.req)
		if !errors.Is(err, c.class) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%+v: err = %v; want %v mentioning %q", c.req, err, c.class, c.says)
		}
	}
	spec, err := e.svc.BuildSpec(context.Background(), api.BuildImageRequest{Name: "img", Packages: []string{"curl"}})
	if err != nil {
		t.Fatal(err)
	}
	if spec.Release != "bookworm" || spec.CacheDir == "" || spec.WorkDir != e.layout.TmpDir() {
		t.Fatalf("defaults not applied: %+v", spec)
	}
}

func TestImageArgsKeepOnlyWhatTheImageAdds(t *testing.T) {
	got := imageArgs("console=ttyS0 root=/dev/vda rootfstype=ext4 rw panic=-1 quiet loglevel=3 systemd.show_status=1")
	if got != "rootfstype=ext4 quiet loglevel=3 systemd.show_status=1" {
		t.Fatalf("imageArgs = %q", got)
	}
}
