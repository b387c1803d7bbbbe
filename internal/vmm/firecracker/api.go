package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/banger-vm/banger/errdefs"
)

// requestTimeout bounds one API request. Firecracker answers configuration
// requests in microseconds and InstanceStart in milliseconds; ten seconds
// only trips on a wedged VMM.
const requestTimeout = 10 * time.Second

// maxResponse caps how much of an answer is read: Firecracker's largest
// answer (GET /vm/config) is a few KiB.
const maxResponse = 1 << 20

// APIError is a non-2xx answer from Firecracker's API. FaultMessage is
// Firecracker's own explanation (the body's fault_message).
type APIError struct {
	Method       string
	Path         string
	Status       int
	FaultMessage string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("firecracker: %s %s: %d: %s", e.Method, e.Path, e.Status, e.FaultMessage)
}

// client speaks HTTP to one Firecracker API socket. Every request gets its
// own connection, so nothing is left open between calls.
type client struct {
	sock string
	http *http.Client
}

func newClient(sock string) *client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}
	return &client{sock: sock, http: &http.Client{Transport: tr}}
}

// do sends one request. A non-nil in is the JSON body; a non-nil out
// receives the JSON answer. A non-2xx answer is an *APIError wrapped in
// errdefs.FailedPrecondition: Firecracker refused the request as it stands.
func (c *client) do(ctx context.Context, method, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker: %s %s: encode body: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	// The host is irrelevant on a unix socket; "localhost" is what the
	// API specification names.
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return errdefs.Unavailable("firecracker: %s %s: no answer within %s on %s", method, path, requestTimeout, c.sock)
		}
		return fmt.Errorf("firecracker: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("firecracker: %s %s: read answer: %w", method, path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return errdefs.FailedPrecondition("%w", &APIError{
			Method: method, Path: path, Status: resp.StatusCode, FaultMessage: faultMessage(raw, resp.StatusCode),
		})
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return fmt.Errorf("firecracker: %s %s: decode answer: %w", method, path, err)
		}
	}
	return nil
}

// faultMessage extracts Firecracker's explanation from an error answer
// ({"fault_message": "..."}), falling back to the raw body or the status.
func faultMessage(raw []byte, status int) string {
	var fault struct {
		FaultMessage string `json:"fault_message"`
	}
	if json.Unmarshal(raw, &fault) == nil && fault.FaultMessage != "" {
		return fault.FaultMessage
	}
	if s := strings.TrimSpace(string(raw)); s != "" {
		return s
	}
	return http.StatusText(status)
}

// Request bodies, named after the API specification's definitions. Only the
// fields banger sets are declared; omitempty leaves Firecracker's defaults.

type logger struct {
	Level         string `json:"level,omitempty"`
	ShowLevel     bool   `json:"show_level"`
	ShowLogOrigin bool   `json:"show_log_origin"`
}

type machineConfig struct {
	VCPUCount  int `json:"vcpu_count"`
	MemSizeMiB int `json:"mem_size_mib"`
}

type bootSource struct {
	KernelImagePath string `json:"kernel_image_path"`
	InitrdPath      string `json:"initrd_path,omitempty"`
	BootArgs        string `json:"boot_args,omitempty"`
}

type drive struct {
	DriveID      string `json:"drive_id"`
	PathOnHost   string `json:"path_on_host"`
	IsRootDevice bool   `json:"is_root_device"`
	IsReadOnly   bool   `json:"is_read_only"`
}

type networkInterface struct {
	IfaceID     string `json:"iface_id"`
	HostDevName string `json:"host_dev_name"`
	GuestMAC    string `json:"guest_mac,omitempty"`
}

type vsock struct {
	GuestCID uint32 `json:"guest_cid"`
	UDSPath  string `json:"uds_path"`
}

type entropyDevice struct{}

type instanceAction struct {
	ActionType string `json:"action_type"`
}

type firecrackerVersion struct {
	FirecrackerVersion string `json:"firecracker_version"`
}
