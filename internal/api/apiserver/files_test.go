package apiserver

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

func init() {
	samples["auth.grant"] = sample{"POST", "/v1/auth/grants", `{"user":"alice","seconds":60,"factor":"totp"}`, "AuthGrant"}
	samples["auth.ls"] = sample{"GET", "/v1/auth/grants", "", "AuthList"}
	samples["auth.revoke"] = sample{"POST", "/v1/auth/revoke", `{"user":"alice"}`, "AuthRevoke"}
	samples["files.open"] = sample{"GET", "/v1/files/open", "", "ServedFiles"}
}

func (f *fakeVM) AuthGrant(_ context.Context, c api.Caller, req api.AuthGrantRequest) (api.AuthGrant, error) {
	f.called("AuthGrant")
	t0 := time.Unix(1700000000, 0).UTC()
	return api.AuthGrant{User: req.User, UIDs: req.UIDs, Granted: t0, Expires: t0.Add(time.Duration(req.Seconds) * time.Second), By: c.UID, Factor: req.Factor}, nil
}

func (f *fakeVM) AuthList(context.Context) (api.AuthGrants, error) {
	f.called("AuthList")
	return api.AuthGrants{Grants: []api.AuthGrant{}}, nil
}

func (f *fakeVM) AuthRevoke(_ context.Context, _ api.Caller, req api.AuthRevokeRequest) (api.AuthRevokeResult, error) {
	f.called("AuthRevoke")
	if req.User != "alice" {
		return api.AuthRevokeResult{}, &api.Error{Code: api.CodeNotFound, Message: "no grant for user " + req.User}
	}
	t0 := time.Unix(1700000000, 0).UTC()
	return api.AuthRevokeResult{Grant: api.AuthGrant{User: "alice", Granted: t0, Expires: t0, Factor: "totp"},
		Purge: api.Purge{CanaryPagesBefore: 1, CanaryPagesAfter: 0, Mounts: 1, Inodes: 3}}, nil
}

func (f *fakeVM) ServedFiles(context.Context) (api.ServedFiles, error) {
	f.called("ServedFiles")
	return api.ServedFiles{Shares: []api.ServedShare{{Name: "conf", HostDir: "/srv/conf", GuestPath: "/mnt/conf"}},
		Open: []api.ServedOpen{{Share: "conf", PID: 42, Comm: "cat", UID: 1000, FD: 3, Path: "/mnt/conf/secret", Mode: "r"}}}, nil
}

func TestFilesEndpoints(t *testing.T) {
	vm := &fakeVM{}
	c := apiclient.New(listen(t, vm, Options{}))
	ctx := context.Background()
	g, err := c.AuthGrant(ctx, api.AuthGrantRequest{User: "alice", Seconds: 60, Factor: "totp", UIDs: []uint32{1000}})
	if err != nil || g.User != "alice" || g.Expires.Sub(g.Granted) != time.Minute {
		t.Fatalf("AuthGrant = %+v, %v", g, err)
	}
	for _, bad := range []api.AuthGrantRequest{
		{User: "Alice", Seconds: 60, Factor: "totp"},
		{User: "alice", Seconds: 0, Factor: "totp"},
		{User: "alice", Seconds: 60, Factor: "password"},
		{User: "alice", Seconds: 60, Factor: "totp", Programs: []string{"cat"}},
	} {
		if _, err := c.AuthGrant(ctx, bad); !api.IsCode(err, api.CodeBadRequest) {
			t.Errorf("AuthGrant(%+v) = %v, want bad request", bad, err)
		}
	}
	if r, err := c.AuthRevoke(ctx, api.AuthRevokeRequest{User: "alice"}); err != nil || r.Purge.CanaryPagesBefore != 1 {
		t.Fatalf("AuthRevoke = %+v, %v", r, err)
	}
	if _, err := c.AuthRevoke(ctx, api.AuthRevokeRequest{User: "bob"}); !api.IsCode(err, api.CodeNotFound) {
		t.Fatalf("AuthRevoke(bob) = %v", err)
	}
	if sf, err := c.ServedFiles(ctx); err != nil || len(sf.Open) != 1 {
		t.Fatalf("ServedFiles = %+v, %v", sf, err)
	}
	_ = http.MethodGet
}
