package client

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/banger-vm/banger/api"
)

// WaitAgent waits up to wait for vm's guest agent to be ready. A VM whose
// image has no agent gives errdefs.ErrNotSupported: wait for SSH instead.
func (c *Client) WaitAgent(ctx context.Context, vm string, wait time.Duration) (api.AgentStatus, error) {
	var out api.AgentStatus
	return out, c.do(ctx, http.MethodGet, "/vms"+ref(vm)+"/agent?"+agentQuery(wait), nil, &out)
}

func agentQuery(wait time.Duration) string {
	return url.Values{api.AgentWaitParam: {wait.String()}}.Encode()
}

// DialAgent opens an SSH connection to vm's guest agent through the
// daemon: the API connection upgraded (api.AgentUpgrade), over which the
// caller runs an SSH client (agent.NewClient). It waits up to wait for the
// agent. Errors are the daemon's, with their class (NotSupported: the
// image has no agent).
func (c *Client) DialAgent(ctx context.Context, vm string, wait time.Duration) (net.Conn, api.AgentStatus, error) {
	conn, err := c.dialAgent(ctx, vm, wait)
	if err != nil {
		return nil, api.AgentStatus{}, err
	}
	return conn, api.AgentStatus{User: conn.user}, nil
}

func (c *Client) dialAgent(ctx context.Context, vm string, wait time.Duration) (*bufferedConn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.socket)
	if err != nil {
		return nil, c.dialError(err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://banger/"+api.Version+"/vms"+ref(vm)+"/agent?"+agentQuery(wait), nil)
	if err != nil {
		conn.Close()
		return nil, err
	}
	req.Header.Set(api.APIVersionHeader, api.Version)
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", api.AgentUpgrade)
	br := bufio.NewReader(conn)
	resp, err := func() (*http.Response, error) {
		if err := req.Write(conn); err != nil {
			return nil, err
		}
		return http.ReadResponse(br, req)
	}()
	if !stop() {
		if resp != nil {
			resp.Body.Close()
		}
		conn.Close()
		return nil, ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, c.dialError(err)
	}
	if err := c.checkAPIVersion(resp); err != nil {
		conn.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		defer conn.Close()
		if resp.StatusCode < 300 {
			return nil, fmt.Errorf("daemon answered %s to an upgrade to %s", resp.Status, api.AgentUpgrade)
		}
		return nil, decodeError(resp)
	}
	return &bufferedConn{Conn: conn, r: br, user: resp.Header.Get(api.GuestUserHeader)}, nil
}

// bufferedConn reads first what was buffered with the response.
type bufferedConn struct {
	net.Conn
	r    *bufio.Reader
	user string
}

func (b *bufferedConn) Read(p []byte) (int, error) { return b.r.Read(p) }
