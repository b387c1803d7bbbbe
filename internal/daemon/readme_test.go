package daemon

import (
	"cmp"
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/banger-vm/banger/api"
)

// readmeList returns the backquoted names of the README's list that
// follows marker, up to the closing parenthesis.
func readmeList(t *testing.T, readme, marker string) []string {
	t.Helper()
	i := strings.Index(readme, marker)
	if i < 0 {
		t.Fatalf("README has no %q", marker)
	}
	rest := readme[i+len(marker):]
	rest = rest[:strings.Index(rest, ")")]
	var out []string
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(rest, -1) {
		out = append(out, m[1])
	}
	return out
}

func names(steps []Step) []string {
	var out []string
	for _, s := range steps {
		out = append(out, s.Name)
	}
	return out
}

// TestREADMEStepListsMatchTheCode: the README's "How it works" names the
// steps of create, start, teardown and delete as the code builds them.
func TestREADMEStepListsMatchTheCode(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := strings.Join(strings.Fields(string(b)), " ")
	e, _ := newNetEnv(t)
	v, err := e.svc.CreateVM(context.Background(), api.CreateVMRequest{Name: "web", VCPUs: 1, MemoryMiB: 128, Publish: []string{"8080:80"}})
	if err != nil {
		t.Fatal(err)
	}
	op := e.svc.newOperation("test", v)
	v.Runtime.Tap = "tap-test" // a recorded runtime, as teardown sees it
	sc := e.svc.recordedContext(v)
	start := e.svc.buildStartSteps(op, sc)
	var releases []string
	for i := len(start) - 1; i >= 0; i-- {
		if r := start[i].Release; r != nil {
			releases = append(releases, cmp.Or(r.Stage, start[i].Name))
		}
	}
	for _, c := range []struct {
		marker string
		code   []string
	}{
		{"then runs its steps (", names(e.svc.buildCreateSteps(op, &createCtx{v: v}))},
		{"**start** runs (", names(start)},
		{"the releases of what the VM's record holds (", releases},
		{"**delete** runs (", names(e.svc.buildDeleteSteps(op, v))},
	} {
		if got := readmeList(t, readme, c.marker); !slices.Equal(got, c.code) {
			t.Errorf("README after %q lists %v; the code runs %v", c.marker, got, c.code)
		}
	}
	v.Runtime.Tap = ""
}
