package client

import (
	"context"
	"net/http"

	"github.com/banger-vm/banger/api"
	"github.com/banger-vm/banger/errdefs"
)

// Version returns the daemon's build and the API version it speaks.
func (c *Client) Version(ctx context.Context) (api.VersionInfo, error) {
	var out api.VersionInfo
	return out, c.do(ctx, http.MethodGet, "/version", nil, &out)
}

// checkAPIVersion refuses an answer from a daemon that speaks another API
// version than this client, before anything tries to decode it. An answer
// without the header comes from a daemon older than the header: its
// successful answers are used as they are, its errors keep their own text.
func (c *Client) checkAPIVersion(resp *http.Response) error {
	got := resp.Header.Get(api.APIVersionHeader)
	if got == "" || got == api.Version {
		return nil
	}
	return errdefs.FailedPrecondition("the daemon at %s speaks API %s but this client speaks API %s (hint: use the banger CLI of the daemon's version, or restart the daemon from the new binary; `banger version` shows both)",
		c.socket, got, api.Version)
}
