package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// nestedRequest has what no API request has yet, to check depth: a nested
// object, a map and a list of objects.
type nestedRequest struct {
	Name  string            `json:"name"`
	Inner struct{ A int }   `json:"inner"`
	Tags  map[string]string `json:"tags"`
	List  []struct {
		B string `json:"b"`
	} `json:"list"`
	At time.Time `json:"at"`
}

func TestDecodeRefusesHostileBodies(t *testing.T) {
	deep := `{"tags":` + strings.Repeat(`{"a":`, 40) + "1" + strings.Repeat("}", 41)
	for _, tc := range []struct {
		name, body, want string
		nested           bool
	}{
		{"unknown field", `{"name":"a","bogus":1}`, `unknown field "bogus"`, false},
		{"trailing data", `{"name":"a"} x`, "data after the JSON object", false},
		{"two objects", `{"name":"a"}{"name":"b"}`, "data after the JSON object", false},
		{"two objects on two lines", "{\"name\":\"a\"}\n{\"name\":\"b\"}\n", "data after the JSON object", false},
		{"duplicate key", `{"name":"a","name":"b"}`, `duplicate key "name"`, false},
		{"duplicate key in a list", `{"publish":["1:1"],"publish":["2:2"]}`, `duplicate key "publish"`, false},
		{"case-insensitive name", `{"Name":"a"}`, `unknown field "Name" (field names are case-sensitive: did you mean "name"?)`, false},
		{"upper-case name", `{"NAME":"a"}`, `did you mean "name"`, false},
		{"case-insensitive duplicate", `{"name":"a","nAme":"b"}`, `did you mean "name"`, false},
		{"not an object: array", `[{"name":"a"}]`, "must be a JSON object, not an array", false},
		{"not an object: string", `"a"`, "must be a JSON object, not a string", false},
		{"not an object: null", `null`, "must be a JSON object, not null", false},
		{"not an object: number", `42`, "must be a JSON object, not a number", false},
		{"truncated", `{"name":`, "the JSON ends before the object does", false},
		{"wrong type", `{"vcpus":"2"}`, "vcpus", false},
		{"overflow", `{"vcpus":1e100}`, "vcpus", false},
		{"negative size overflow", `{"disk_bytes":-99999999999999999999}`, "disk_bytes", false},
		{"invalid utf-8", "{\"name\":\"\xff\xfe\"}", "not valid UTF-8", false},
		{"too large", `{"name":"` + strings.Repeat("a", MaxBodyBytes) + `"}`, "larger than 1048576 bytes", false},
		{"nested duplicate", `{"inner":{"A":1,"A":2}}`, `duplicate key "inner.A"`, true},
		{"nested case", `{"inner":{"a":1}}`, `unknown field "inner.a" (field names are case-sensitive: did you mean "A"?)`, true},
		{"nested unknown", `{"inner":{"Z":1}}`, `unknown field "inner.Z"`, true},
		{"map duplicate", `{"tags":{"x":"1","x":"2"}}`, `duplicate key "tags.x"`, true},
		{"list element duplicate", `{"list":[{"b":"1"},{"b":"1","b":"2"}]}`, `duplicate key "list[1].b"`, true},
		{"list element case", `{"list":[{"B":"1"}]}`, `did you mean "b"`, true},
		{"deep", deep, "nested deeper than 32 levels", true},
		{"deep arrays", `{"tags":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, "nested deeper than", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("POST", "/v1/vms", strings.NewReader(tc.body))
			var err error
			if tc.nested {
				var v nestedRequest
				err = decode(r, &v)
			} else {
				v := api.CreateVMRequest{Name: "untouched"}
				err = decode(r, &v)
				if err != nil && v.Name != "untouched" {
					t.Errorf("a refused body changed the request to %+v", v)
				}
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not say %q", err, tc.want)
			}
			if StatusOf(errdefs.ClassOf(err)) != http.StatusBadRequest {
				t.Fatalf("status %d, want 400", StatusOf(errdefs.ClassOf(err)))
			}
		})
	}
}

func TestDecodeAccepts(t *testing.T) {
	for _, body := range []string{"", "  \n", `{}`, ` {"name":"a","vcpus":2,"publish":["8080:80"]} ` + "\n"} {
		var v api.CreateVMRequest
		if err := decode(httptest.NewRequest("POST", "/", strings.NewReader(body)), &v); err != nil {
			t.Fatalf("%q refused: %v", body, err)
		}
	}
	var n nestedRequest
	body := `{"name":"a","inner":{"A":1},"tags":{"x":"1","X":"2"},"list":[{"b":"1"},{"b":"2"}],"at":"2026-01-02T03:04:05Z"}`
	if err := decode(httptest.NewRequest("POST", "/", strings.NewReader(body)), &n); err != nil {
		t.Fatal(err)
	}
	if n.Inner.A != 1 || n.Tags["X"] != "2" || len(n.List) != 2 || n.At.Year() != 2026 {
		t.Fatalf("decoded %+v", n)
	}
}

// serveLimited serves h on a unix socket with lim, as the daemon does.
func serveLimited(t *testing.T, h http.Handler, lim Limits) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := Listen(sock, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := NewHTTPServer(context.Background(), h, slog.New(slog.DiscardHandler), lim)
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func decodeHandler(w http.ResponseWriter, r *http.Request) {
	var req api.CreateVMRequest
	if err := decode(r, &req); err != nil {
		w.WriteHeader(StatusOf(errdefs.ClassOf(err)))
		fmt.Fprint(w, err)
		return
	}
	fmt.Fprintf(w, "hello %s", req.Name)
}

// dial connects, with a read deadline that only guards the test from
// hanging: the server must act long before it.
func dial(t *testing.T, sock string) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	return c
}

// closedByServer reads c to its end; it fails if the guard deadline passes.
func closedByServer(t *testing.T, c net.Conn) string {
	t.Helper()
	b, err := io.ReadAll(c)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open (read %q)", b)
	}
	return string(b)
}

func TestSlowClientsAreCutOff(t *testing.T) {
	lim := Limits{Header: 300 * time.Millisecond, Body: 300 * time.Millisecond, Idle: time.Second, MaxHalfOpen: 8}
	sock := serveLimited(t, http.HandlerFunc(decodeHandler), lim)

	t.Run("half-sent headers", func(t *testing.T) {
		c := dial(t, sock)
		fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\nHost: banger\r\nContent-Le")
		closedByServer(t, c)
	})
	t.Run("half-sent body", func(t *testing.T) {
		c := dial(t, sock)
		fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\nHost: banger\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\":")
		got := closedByServer(t, c)
		if !strings.HasPrefix(got, "HTTP/1.1 400") || !strings.Contains(got, "reading the request body") {
			t.Fatalf("answer %q, want a 400 saying the body did not arrive", got)
		}
	})
	t.Run("a whole request is served", func(t *testing.T) {
		c := dial(t, sock)
		fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\nHost: banger\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"name\":\"a\"}")
		if got := closedByServer(t, c); !strings.HasSuffix(got, "hello a") {
			t.Fatalf("answer %q", got)
		}
	})
}

func TestStreamingOutlivesTheBodyTimeout(t *testing.T) {
	lim := Limits{Header: 200 * time.Millisecond, Body: 200 * time.Millisecond, Idle: time.Second, MaxHalfOpen: 8}
	sock := serveLimited(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req api.CreateVMRequest
		if err := decode(r, &req); err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		for i := 0; i < 8; i++ { // 1.6 s: eight body timeouts
			select {
			case <-r.Context().Done():
				fmt.Fprintf(w, "cancelled\n")
				return
			case <-time.After(200 * time.Millisecond):
			}
			fmt.Fprintf(w, "tick %d\n", i)
			http.NewResponseController(w).Flush()
		}
		fmt.Fprint(w, "done\n")
	}), lim)
	c := dial(t, sock)
	fmt.Fprint(c, "POST /v1/images/build HTTP/1.1\r\nHost: banger\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"name\":\"a\"}")
	got := closedByServer(t, c)
	if !strings.Contains(got, "tick 7\n") || !strings.Contains(got, "done\n") || strings.Contains(got, "cancelled") {
		t.Fatalf("stream %q was cut", got)
	}
}

func TestHalfOpenConnectionsAreLimited(t *testing.T) {
	lim := Limits{Header: time.Minute, Body: time.Minute, Idle: time.Minute, MaxHalfOpen: 4}
	sock := serveLimited(t, http.HandlerFunc(decodeHandler), lim)
	var held []net.Conn
	for i := 0; i < lim.MaxHalfOpen; i++ {
		c := dial(t, sock)
		fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\n")
		held = append(held, c)
	}
	// A fifth client, sending its request at once, is served; the oldest
	// half-open connection is closed to make room (the server accepts in
	// order, so that is the first).
	c := dial(t, sock)
	fmt.Fprint(c, "POST /v1/vms HTTP/1.1\r\nHost: banger\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"name\":\"e\"}")
	if got := closedByServer(t, c); !strings.HasSuffix(got, "hello e") {
		t.Fatalf("a client was refused while others held half-open connections: %q", got)
	}
	if got := closedByServer(t, held[0]); got != "" {
		t.Fatalf("the oldest half-open connection got %q, want it closed", got)
	}
	// The others were left alone: they can finish their requests.
	fmt.Fprint(held[1], "Host: banger\r\nConnection: close\r\nContent-Length: 12\r\n\r\n{\"name\":\"b\"}")
	if got := closedByServer(t, held[1]); !strings.HasSuffix(got, "hello b") {
		t.Fatalf("a younger half-open connection was not served: %q", got)
	}
}
