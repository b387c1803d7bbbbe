package server

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
	"github.com/banger-vm/banger/internal/version"
)

func TestVersionRoute(t *testing.T) {
	h := newHarness(t)
	v, err := h.c.Version(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if v.APIVersion != api.Version || v.Version != version.Get().Version || v.GoVersion == "" {
		t.Fatalf("version: %+v", v)
	}
}

// A client speaking another API version gets a classed error naming both
// versions, on every route, including ones this daemon does not have.
func TestAPIVersionMismatchRefused(t *testing.T) {
	h := newHarness(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", h.socket)
	}}}
	for _, path := range []string{"/v1/vms", "/v2/vms", "/v2/vms/web/fork"} {
		req, _ := http.NewRequest(http.MethodGet, "http://banger"+path, nil)
		req.Header.Set(api.APIVersionHeader, "v2")
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e api.ErrorResponse
		if err := json.Unmarshal(b, &e); err != nil {
			t.Fatalf("%s: %v: %s", path, err, b)
		}
		if resp.StatusCode != http.StatusPreconditionFailed || e.Error.Class != string(errdefs.ClassFailedPrecondition) ||
			!strings.Contains(e.Error.Message, "API v2") || !strings.Contains(e.Error.Message, "API "+api.Version) || !strings.Contains(e.Error.Message, "hint:") {
			t.Fatalf("%s: %d %+v", path, resp.StatusCode, e)
		}
		if got := resp.Header.Get(api.APIVersionHeader); got != api.Version {
			t.Fatalf("%s: answer's API version header %q", path, got)
		}
	}
	// Without the header (curl) the request is served.
	if status, _ := rawRequest(t, h.socket, http.MethodGet, "/v1/vms", ""); status != http.StatusOK {
		t.Fatalf("request without version header: %d", status)
	}
}
