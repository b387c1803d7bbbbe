// Package fctest is a test double of Firecracker's HTTP API. It checks
// every request against Firecracker's own API specification
// (firecracker-v1.16.1.yaml, Swagger 2.0, read at test time and converted
// with kin-openapi), models the pre-boot/post-boot rules Firecracker
// enforces, answers faults as Firecracker does, and records what it was
// asked. A test binary can also act as the firecracker and jailer
// executables (see RunIfFake), so a driver is exercised through a real
// process, socket and HTTP client.
//
// It is for tests only.
package fctest

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// EnvSpec overrides where the API specification is read from.
const EnvSpec = "BANGER_FC_SPEC"

// SpecFile is the specification's name in the shared reference directory,
// ../shared/firecracker/ from the repository root.
const SpecFile = "firecracker-v1.16.1.yaml"

// SpecPath finds the API specification: $BANGER_FC_SPEC, else
// <repo>/../shared/firecracker/firecracker-v1.16.1.yaml, the repository
// root being the nearest directory above the working directory with a
// go.mod. A missing file is an error that says where it was looked for.
func SpecPath() (string, error) {
	if p := os.Getenv(EnvSpec); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("firecracker API spec from $%s: %w", EnvSpec, err)
		}
		return filepath.Abs(p)
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			return "", fmt.Errorf("firecracker API spec: no go.mod above %s to locate the repository (hint: set $%s)", wd, EnvSpec)
		}
		root = parent
	}
	// Next to the repository (the workplace's layout), else the workplace's
	// own shared directory (a clone made elsewhere on the same machine).
	candidates := []string{filepath.Join(root, "..", "shared", "firecracker", SpecFile), filepath.Join(sharedDir, "firecracker", SpecFile)}
	for _, p := range candidates {
		if _, err := os.Stat(p); err == nil {
			return filepath.Clean(p), nil
		}
	}
	return "", fmt.Errorf("firecracker API spec is missing: looked for %s (hint: it lives in ../shared/firecracker/ next to the repository, or set $%s)", strings.Join(candidates, " and "), EnvSpec)
}

// sharedDir is the workplace's shared reference directory.
const sharedDir = "/work/shared"

// Spec is the API specification, ready to validate requests and answers.
type Spec struct {
	Version string // info.version, e.g. "1.16.1"
	doc     *openapi3.T
	router  routers.Router
}

// LoadSpec reads and converts the Swagger 2.0 document at path.
func LoadSpec(path string) (*Spec, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read firecracker API spec: %w", err)
	}
	var doc2 openapi2.T
	if err := openapi2.UnmarshalFromData(data, &doc2); err != nil {
		return nil, fmt.Errorf("parse firecracker API spec %s: %w", path, err)
	}
	doc, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("convert firecracker API spec to OpenAPI 3: %w", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		return nil, fmt.Errorf("firecracker API spec %s is not valid: %w", path, err)
	}
	// Firecracker ignores the Host header on its unix socket; match on the
	// path alone rather than on the spec's http://localhost/.
	doc.Servers = nil
	denyUnknownFields(doc)
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route firecracker API spec: %w", err)
	}
	return &Spec{Version: doc.Info.Version, doc: doc, router: router}, nil
}

// denyUnknownFields closes every object schema that declares properties
// and says nothing about additional ones. The document leaves them open,
// but Firecracker decodes its request bodies with serde's
// deny_unknown_fields and answers 400 to a field it does not know; the
// double must be at least as strict. Schemas that allow additional
// properties on purpose (MmdsContentsObject) say so and are left alone.
func denyUnknownFields(doc *openapi3.T) {
	seen := map[*openapi3.Schema]bool{}
	var walk func(*openapi3.SchemaRef)
	walk = func(ref *openapi3.SchemaRef) {
		if ref == nil || ref.Value == nil || seen[ref.Value] {
			return
		}
		s := ref.Value
		seen[s] = true
		if len(s.Properties) > 0 && s.AdditionalProperties.Has == nil && s.AdditionalProperties.Schema == nil {
			no := false
			s.AdditionalProperties.Has = &no
		}
		for _, p := range s.Properties {
			walk(p)
		}
		walk(s.Items)
		for _, sub := range append(append(append([]*openapi3.SchemaRef{}, s.AllOf...), s.AnyOf...), s.OneOf...) {
			walk(sub)
		}
	}
	for _, s := range doc.Components.Schemas {
		walk(s)
	}
	for _, item := range doc.Paths.Map() {
		for _, op := range item.Operations() {
			if op.RequestBody != nil && op.RequestBody.Value != nil {
				for _, mt := range op.RequestBody.Value.Content {
					walk(mt.Schema)
				}
			}
		}
	}
}

// Violation is a request (or, for a bug in the double, an answer) that the
// specification rejects.
type Violation struct{ Reason string }

func (v *Violation) Error() string { return "firecracker API spec violation: " + v.Reason }

// Route finds the operation for a request and checks the request (method,
// path, headers, body) against it. r.Body must hold the full body; it is
// read.
func (s *Spec) Route(ctx context.Context, r *http.Request) (*openapi3filter.RequestValidationInput, error) {
	route, params, err := s.router.FindRoute(r)
	if err != nil {
		switch {
		case errors.Is(err, routers.ErrMethodNotAllowed):
			return nil, &Violation{fmt.Sprintf("%s %s: the API has no such method for this path", r.Method, r.URL.Path)}
		default:
			return nil, &Violation{fmt.Sprintf("%s %s: the API has no such path", r.Method, r.URL.Path)}
		}
	}
	opts := &openapi3filter.Options{
		AuthenticationFunc:  openapi3filter.NoopAuthenticationFunc,
		SkipSettingDefaults: true,
		// A body on an operation that takes none (GET /version) is a
		// mistake too.
		RejectWhenRequestBodyNotSpecified: true,
	}
	opts.WithCustomSchemaErrorFunc(schemaError)
	in := &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route, Options: opts}
	if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
		return nil, &Violation{fmt.Sprintf("%s %s (%s): %s", r.Method, r.URL.Path, route.Operation.OperationID, oneLine(err))}
	}
	return in, nil
}

// CheckAnswer checks an answer against the operation's documented
// responses: the double must answer as Firecracker documents.
func (s *Spec) CheckAnswer(ctx context.Context, in *openapi3filter.RequestValidationInput, status int, header http.Header, body []byte) error {
	respOpts := &openapi3filter.Options{IncludeResponseStatus: true}
	respOpts.WithCustomSchemaErrorFunc(schemaError)
	err := openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in,
		Status:                 status,
		Header:                 header,
		Body:                   nopCloser{strings.NewReader(string(body))},
		Options:                respOpts,
	})
	if err != nil {
		return &Violation{fmt.Sprintf("answer %d to %s %s: %s", status, in.Request.Method, in.Request.URL.Path, oneLine(err))}
	}
	return nil
}

type nopCloser struct{ *strings.Reader }

func (nopCloser) Close() error { return nil }

// schemaError names the offending field and the rule, without kin's dump
// of the whole schema.
func schemaError(err *openapi3.SchemaError) string {
	field := strings.Join(err.JSONPointer(), ".")
	if field == "" {
		return err.Reason
	}
	return fmt.Sprintf("field %q: %s", field, err.Reason)
}

func oneLine(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
