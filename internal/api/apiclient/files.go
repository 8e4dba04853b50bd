package apiclient

import (
	"context"

	"github.com/gatevisor/gatevisor/internal/api"
)

// AuthGrant tells the monitor that the user was authenticated on the host.
func (c *Client) AuthGrant(ctx context.Context, req api.AuthGrantRequest) (api.AuthGrant, error) {
	var res api.AuthGrant
	err := c.do(ctx, "POST", "/v1/auth/grants", req, &res)
	return res, err
}

// AuthList returns the grants in force.
func (c *Client) AuthList(ctx context.Context) (api.AuthGrants, error) {
	var res api.AuthGrants
	err := c.do(ctx, "GET", "/v1/auth/grants", nil, &res)
	return res, err
}

// AuthRevoke ends a user's grant and returns what the purge found.
func (c *Client) AuthRevoke(ctx context.Context, req api.AuthRevokeRequest) (api.AuthRevokeResult, error) {
	var res api.AuthRevokeResult
	err := c.do(ctx, "POST", "/v1/auth/revoke", req, &res)
	return res, err
}

// ServedFiles returns the served shares and who holds their files open.
func (c *Client) ServedFiles(ctx context.Context) (api.ServedFiles, error) {
	var res api.ServedFiles
	err := c.do(ctx, "GET", "/v1/files/open", nil, &res)
	return res, err
}
