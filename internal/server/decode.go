package server

import (
	"bytes"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/banger-vm/banger/errdefs"
)

// MaxBodyBytes bounds every request body.
const MaxBodyBytes = 1 << 20

// maxDepth bounds the nesting of a request body (no request type nests
// more than 3 levels).
const maxDepth = 32

// decode reads a JSON request body into v strictly: one JSON object of at
// most MaxBodyBytes, no unknown fields, no field named in another case
// than its json tag, no key twice in one object (at any depth), nothing
// after it. An empty body leaves v as is. Errors are invalid arguments.
func decode(r *http.Request, v any) error {
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxBodyBytes+1))
	if err != nil {
		return errdefs.InvalidArgument("reading the request body: %v", err)
	}
	if len(body) > MaxBodyBytes {
		return errdefs.InvalidArgument("request body larger than %d bytes", MaxBodyBytes)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if !utf8.Valid(body) {
		return errdefs.InvalidArgument("malformed request body: not valid UTF-8")
	}
	if err := checkJSON(body, reflect.TypeOf(v)); err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return errdefs.InvalidArgument("malformed request body: the JSON ends before the object does")
		}
		return errdefs.InvalidArgument("malformed request body: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return errdefs.InvalidArgument("malformed request body: %v", err)
	}
	return nil
}

// checkJSON walks body's tokens against the Go type t it will be decoded
// into, refusing what encoding/json lets through: duplicate keys, keys
// matching a field only case-insensitively, a body that is not one object,
// data after it, and deep nesting.
func checkJSON(body []byte, t reflect.Type) error {
	w := walker{dec: json.NewDecoder(bytes.NewReader(body))}
	w.dec.UseNumber()
	tok, err := w.dec.Token()
	if err != nil {
		return err
	}
	if tok != json.Delim('{') {
		return fmt.Errorf("the body must be a JSON object, not %s", describe(tok))
	}
	if err := w.object(t, "", 1); err != nil {
		return err
	}
	if _, err := w.dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON object (send one object per request)")
	}
	return nil
}

type walker struct{ dec *json.Decoder }

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshaler = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// target is the type whose fields a JSON value is checked against; nil
// when it decodes itself (or is any): then only duplicates are checked.
func target(t reflect.Type) reflect.Type {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || t.Kind() == reflect.Interface {
		return nil
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshaler) || reflect.PointerTo(t).Implements(textUnmarshaler) {
		return nil
	}
	return t
}

func (w *walker) value(t reflect.Type, path string, depth int) error {
	tok, err := w.dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		return w.object(t, path, depth+1)
	case json.Delim('['):
		return w.array(t, path, depth+1)
	}
	return nil
}

func (w *walker) object(t reflect.Type, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: nested deeper than %d levels", where(path), maxDepth)
	}
	t = target(t)
	var fields map[string]reflect.Type
	if t != nil && t.Kind() == reflect.Struct {
		fields = jsonFields(t)
	}
	seen := map[string]bool{}
	for w.dec.More() {
		tok, err := w.dec.Token()
		if err != nil {
			return err
		}
		key := tok.(string) // the decoder only yields string keys in an object
		kp := path + "." + key
		if path == "" {
			kp = key
		}
		if seen[key] {
			return fmt.Errorf("duplicate key %q", kp)
		}
		seen[key] = true
		var ft reflect.Type
		switch {
		case fields != nil:
			var ok bool
			if ft, ok = fields[key]; !ok {
				for name := range fields {
					if strings.EqualFold(name, key) {
						return fmt.Errorf("unknown field %q (field names are case-sensitive: did you mean %q?)", kp, name)
					}
				}
				return fmt.Errorf("unknown field %q", kp)
			}
		case t != nil && t.Kind() == reflect.Map:
			ft = t.Elem()
		}
		if err := w.value(ft, kp, depth); err != nil {
			return err
		}
	}
	_, err := w.dec.Token() // '}'
	return err
}

func (w *walker) array(t reflect.Type, path string, depth int) error {
	if depth > maxDepth {
		return fmt.Errorf("%s: nested deeper than %d levels", where(path), maxDepth)
	}
	t = target(t)
	var et reflect.Type
	if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
		et = t.Elem()
	}
	for i := 0; w.dec.More(); i++ {
		if err := w.value(et, fmt.Sprintf("%s[%d]", path, i), depth); err != nil {
			return err
		}
	}
	_, err := w.dec.Token() // ']'
	return err
}

// jsonFields maps the JSON names of t's fields, as encoding/json sees them
// (tags, "-", embedded structs), to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" {
			continue
		}
		name, _, _ := strings.Cut(tag, ",")
		if f.Anonymous && name == "" {
			et := f.Type
			if et.Kind() == reflect.Pointer {
				et = et.Elem()
			}
			if et.Kind() == reflect.Struct {
				for k, v := range jsonFields(et) {
					if _, dup := out[k]; !dup {
						out[k] = v
					}
				}
				continue
			}
		}
		if !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

func where(path string) string {
	if path == "" {
		return "the body"
	}
	return fmt.Sprintf("%q", path)
}

func describe(tok json.Token) string {
	switch tok.(type) {
	case json.Delim:
		return "an array"
	case string:
		return "a string"
	case json.Number:
		return "a number"
	case bool:
		return "a boolean"
	}
	return "null"
}

// WithBodyTimeout bounds how long a request's body may take to arrive: a
// client that sends its headers and then trickles (or never sends) the
// body is cut off after d. The deadline is lifted once the body is read,
// so long streaming responses (image build progress, `vm logs -f`) are
// not cut. http.Server.ReadTimeout cannot be used: it also cancels the
// request context of a handler still streaming when it passes.
func WithBodyTimeout(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody && r.ContentLength != 0 {
			rc := http.NewResponseController(w)
			if err := rc.SetReadDeadline(time.Now().Add(d)); err == nil {
				r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc}
			}
		}
		h.ServeHTTP(w, r)
	})
}

// deadlineBody lifts the connection's read deadline when the body ends.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{}) // the connection may be gone: nothing to do
	}
	return n, err
}
