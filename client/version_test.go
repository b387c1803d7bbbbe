package client

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// serve answers every request on a unix socket with h.
func serve(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

// A daemon speaking another API version answers in shapes this client
// cannot know: the client says so instead of failing to decode.
func TestClientRefusesOtherAPIVersion(t *testing.T) {
	var sent string
	sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
		sent = r.Header.Get(api.APIVersionHeader)
		w.Header().Set(api.APIVersionHeader, "v0")
		w.Write([]byte(`{"vms": "a shape v1 does not know"}`))
	})
	_, err := New(sock).ListVMs(context.Background())
	if !errors.Is(err, errdefs.ErrFailedPrecondition) || !strings.Contains(err.Error(), "speaks API v0") ||
		!strings.Contains(err.Error(), "this client speaks API "+api.Version) || strings.Contains(err.Error(), "decode") {
		t.Fatalf("err = %v", err)
	}
	if sent != api.Version {
		t.Fatalf("client sent API version %q, want %q", sent, api.Version)
	}
}

// A daemon older than the header is still served as before.
func TestClientAcceptsAnswerWithoutVersionHeader(t *testing.T) {
	sock := serve(t, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(`{"version": "old", "api_version": "v1"}`))
	})
	v, err := New(sock).Version(context.Background())
	if err != nil || v.Version != "old" {
		t.Fatalf("%+v %v", v, err)
	}
}
