// Package client is the Go client of banger's daemon API (HTTP+JSON over
// a unix socket). Errors carry the daemon's class: errors.Is(err,
// errdefs.ErrNotFound) works on what it returns.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// Client talks to one daemon.
type Client struct {
	socket string
	hc     *http.Client
}

// New returns a client for the daemon listening on socketPath.
func New(socketPath string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socketPath)
		},
		MaxIdleConns:    4,
		IdleConnTimeout: 30 * time.Second,
	}
	// No overall timeout: a stop may legitimately wait for a guest.
	return &Client{socket: socketPath, hc: &http.Client{Transport: tr}}
}

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	resp, err := c.send(ctx, method, path, in)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil || resp.StatusCode == http.StatusNoContent {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode daemon response to %s %s: %w", method, path, err)
	}
	return nil
}

// send performs a request and turns a non-2xx answer into a classed error.
func (c *Client) send(ctx context.Context, method, path string, in any) (*http.Response, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://banger/"+api.Version+path, body)
	if err != nil {
		return nil, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set(api.APIVersionHeader, api.Version)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, c.dialError(err)
	}
	if err := c.checkAPIVersion(resp); err != nil {
		resp.Body.Close()
		return nil, err
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	return resp, nil
}

func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e api.ErrorResponse
	if json.Unmarshal(b, &e) == nil && e.Error.Class != "" {
		return errdefs.New(errdefs.Class(e.Error.Class), e.Error.Message)
	}
	return fmt.Errorf("daemon answered %s: %s", resp.Status, bytes.TrimSpace(b))
}

func (c *Client) dialError(err error) error {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ECONNREFUSED):
		return errdefs.Unavailable("the banger daemon is not running at %s (hint: start it as root with `banger daemon`, or set --runtime-dir)", c.socket)
	case errors.Is(err, os.ErrPermission):
		return errdefs.Unavailable("permission denied on %s (hint: run banger as root, or as a member of the daemon's --socket-group)", c.socket)
	}
	return errdefs.Unavailable("cannot reach the banger daemon at %s: %v", c.socket, err)
}

func ref(r string) string { return "/" + url.PathEscape(r) }

// Info describes the daemon and its drivers.
func (c *Client) Info(ctx context.Context) (api.Info, error) {
	var out api.Info
	return out, c.do(ctx, http.MethodGet, "/info", nil, &out)
}

func (c *Client) CreateVM(ctx context.Context, req api.CreateVMRequest) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms", req, &out)
}

// ListVMs returns every VM the caller may see, with the listed fields
// (GetVM has the rest).
func (c *Client) ListVMs(ctx context.Context) ([]api.VMSummary, error) {
	var out []api.VMSummary
	return out, c.do(ctx, http.MethodGet, "/vms", nil, &out)
}

func (c *Client) GetVM(ctx context.Context, vm string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodGet, "/vms"+ref(vm), nil, &out)
}

func (c *Client) StartVM(ctx context.Context, vm string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/start", nil, &out)
}

// StopVM shuts vm down gracefully, waiting up to timeout (0: the daemon's
// default); with force, a graceful request that cannot be sent kills it.
func (c *Client) StopVM(ctx context.Context, vm string, timeout time.Duration, force bool) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/stop", api.StopRequest{TimeoutSeconds: timeout.Seconds(), Force: force}, &out)
}

func (c *Client) RestartVM(ctx context.Context, vm string, timeout time.Duration) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/restart", api.StopRequest{TimeoutSeconds: timeout.Seconds()}, &out)
}

// KillVM signals vm's VMM (signal "" is TERM).
func (c *Client) KillVM(ctx context.Context, vm, signal string) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPost, "/vms"+ref(vm)+"/kill", api.KillRequest{Signal: signal}, &out)
}

// SetVMNetwork replaces the network policy of a stopped VM.
func (c *Client) SetVMNetwork(ctx context.Context, vm string, p api.NetworkPolicy) (api.VM, error) {
	var out api.VM
	return out, c.do(ctx, http.MethodPut, "/vms"+ref(vm)+"/network", p, &out)
}

func (c *Client) DeleteVM(ctx context.Context, vm string) error {
	return c.do(ctx, http.MethodDelete, "/vms"+ref(vm), nil, nil)
}

// Operations lists vm's journal, newest first; limit 0 means all.
func (c *Client) Operations(ctx context.Context, vm string, limit int) ([]api.Operation, error) {
	var out []api.Operation
	return out, c.do(ctx, http.MethodGet, "/vms"+ref(vm)+"/ops?limit="+strconv.Itoa(limit), nil, &out)
}

// Logs copies vm's log to w; with follow it streams until the VM stops or
// ctx ends.
func (c *Client) Logs(ctx context.Context, vm string, follow bool, w io.Writer) error {
	q := ""
	if follow {
		q = "?follow=1"
	}
	resp, err := c.send(ctx, http.MethodGet, "/vms"+ref(vm)+"/logs"+q, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(w, resp.Body)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// SSHTarget says how to reach a running VM over SSH.
func (c *Client) SSHTarget(ctx context.Context, vm string) (api.SSHTarget, error) {
	var out api.SSHTarget
	return out, c.do(ctx, http.MethodGet, "/vms"+ref(vm)+"/ssh", nil, &out)
}

func (c *Client) ImportImage(ctx context.Context, req api.ImportImageRequest) (api.Image, error) {
	var out api.Image
	return out, c.do(ctx, http.MethodPost, "/images/import", req, &out)
}

func (c *Client) ListImages(ctx context.Context) ([]api.Image, error) {
	var out []api.Image
	return out, c.do(ctx, http.MethodGet, "/images", nil, &out)
}

func (c *Client) GetImage(ctx context.Context, image string) (api.Image, error) {
	var out api.Image
	return out, c.do(ctx, http.MethodGet, "/images"+ref(image), nil, &out)
}

func (c *Client) DeleteImage(ctx context.Context, image string) error {
	return c.do(ctx, http.MethodDelete, "/images"+ref(image), nil, nil)
}

// BuildImage asks the daemon to build an image, calling onEvent for every
// progress event; it returns the image once it is registered.
func (c *Client) BuildImage(ctx context.Context, req api.BuildImageRequest, onEvent func(api.BuildEvent)) (api.Image, error) {
	resp, err := c.send(ctx, http.MethodPost, "/images/build", req)
	if err != nil {
		return api.Image{}, err
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	for {
		var ev api.BuildEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return api.Image{}, errors.New("the daemon ended the build stream without a result (hint: see the daemon log)")
			}
			return api.Image{}, fmt.Errorf("read build progress: %w", err)
		}
		switch {
		case ev.Error != nil:
			return api.Image{}, errdefs.New(errdefs.Class(ev.Error.Class), ev.Error.Message)
		case ev.Image != nil:
			return *ev.Image, nil
		case onEvent != nil:
			onEvent(ev)
		}
	}
}
