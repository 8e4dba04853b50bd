package api

import (
	"context"
	"fmt"
	"regexp"
	"time"
)

// FilesVM is what a VM that can serve files (run --files) adds to VM:
// the monitor's own grants of authenticated users (gatevisor auth) and
// who holds the served files open. A VM without it answers 409.
type FilesVM interface {
	// AuthGrant records that the operator authenticated User on the host
	// (the CLI checked the second factor): until the grant expires or is
	// revoked, authenticated(User) holds for the guest processes it covers.
	AuthGrant(ctx context.Context, c Caller, req AuthGrantRequest) (AuthGrant, error)
	AuthList(ctx context.Context) (AuthGrants, error)
	// AuthRevoke ends User's grant now, and purges and verifies as at
	// expiry.
	AuthRevoke(ctx context.Context, c Caller, req AuthRevokeRequest) (AuthRevokeResult, error)
	// ServedFiles lists the guest processes that hold served files open.
	ServedFiles(ctx context.Context) (ServedFiles, error)
}

// MaxGrantDuration bounds a grant.
const MaxGrantDuration = 24 * time.Hour

// userPattern is what a user name may be.
var userPattern = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

// ValidUser checks a user name: 1-32 of [a-z0-9_-], not starting with a
// digit or '-', as useradd takes them.
func ValidUser(u string) error {
	if !userPattern.MatchString(u) {
		return fmt.Errorf("user %q: use 1-32 characters of a-z, 0-9, _ and -, starting with a letter or _", u)
	}
	return nil
}

// AuthGrantRequest is POST /v1/auth/grants.
type AuthGrantRequest struct {
	User string `json:"user"`
	// Seconds is how long the grant lasts (1 to MaxGrantDuration).
	Seconds int64 `json:"seconds"`
	// UIDs and Programs restrict the guest processes the grant covers
	// (their real uid; their executable's path); empty: any.
	UIDs     []uint32 `json:"uids,omitempty"`
	Programs []string `json:"programs,omitempty"`
	// Canary, if set, is a string only the protected files hold: at
	// expiry or revocation the monitor counts the guest pages holding it.
	Canary string `json:"canary,omitempty"`
	// Factor says how the CLI authenticated the user ("totp").
	Factor string `json:"factor"`
}

// ValidateAuthGrant checks a grant request.
func ValidateAuthGrant(r *AuthGrantRequest) error {
	if err := ValidUser(r.User); err != nil {
		return err
	}
	if r.Seconds < 1 || r.Seconds > int64(MaxGrantDuration/time.Second) {
		return fmt.Errorf("duration %ds: give 1s to %v", r.Seconds, MaxGrantDuration)
	}
	if len(r.UIDs) > 64 || len(r.Programs) > 64 {
		return fmt.Errorf("at most 64 uids and 64 programs")
	}
	for _, p := range r.Programs {
		if len(p) == 0 || len(p) > 4096 || p[0] != '/' {
			return fmt.Errorf("program %.64q: an absolute path", p)
		}
	}
	if r.Canary != "" && (len(r.Canary) < 8 || len(r.Canary) > 4096) {
		return fmt.Errorf("canary of %d bytes: give 8 to 4096", len(r.Canary))
	}
	if r.Factor != "totp" {
		return fmt.Errorf("factor %q: only totp", r.Factor)
	}
	return nil
}

// AuthGrant is one grant.
type AuthGrant struct {
	User     string    `json:"user"`
	UIDs     []uint32  `json:"uids,omitempty"`
	Programs []string  `json:"programs,omitempty"`
	Granted  time.Time `json:"granted"`
	Expires  time.Time `json:"expires"`
	// By is the API caller's uid (the operator on the host).
	By     uint32 `json:"by"`
	Factor string `json:"factor"`
}

// AuthGrants is GET /v1/auth/grants: the grants in force.
type AuthGrants struct {
	Grants []AuthGrant `json:"grants"`
}

// AuthRevokeRequest is POST /v1/auth/revoke.
type AuthRevokeRequest struct {
	User string `json:"user"`
	// Canary overrides the grant's canary for the scan.
	Canary string `json:"canary,omitempty"`
}

// Purge is what the monitor found of the served files' data in the guest
// when a grant ended, before and after it purged.
type Purge struct {
	// CachedPages are the page-cache pages of the served mounts' inodes,
	// from the guest kernel's own structures (mounts, inodes walked).
	CachedPagesBefore uint64 `json:"cached_pages_before"`
	CachedPagesAfter  uint64 `json:"cached_pages_after"`
	Mounts            int    `json:"mounts"`
	Inodes            int    `json:"inodes"`
	// CanaryPages are the guest-physical pages holding the canary, by a
	// raw scan of guest RAM (-1: no canary given).
	CanaryPagesBefore int `json:"canary_pages_before"`
	CanaryPagesAfter  int `json:"canary_pages_after"`
	// Dropped says the guest kernel was made to drop its clean caches.
	Dropped bool `json:"dropped"`
	// Scrubbed counts the pages holding the canary that the guest
	// kernel's page allocator held free (its buddy or per-CPU free lists,
	// read with the guest stopped), zeroed from outside before it ran on.
	Scrubbed int `json:"scrubbed"`
	// Held are the pages that still held the canary after the scrub
	// (the guest still stopped), with what the guest kernel says of each.
	Held []PurgePage `json:"held,omitempty"`
	// Errors are what could not be done or read.
	Errors []string `json:"errors,omitempty"`
}

// PurgePage is a guest page that holds the canary and was not free.
type PurgePage struct {
	PFN  uint64 `json:"pfn"`
	Kind string `json:"kind"`
	// Owners are the processes whose memory it is (anonymous pages).
	Owners []PurgeOwner `json:"owners,omitempty"`
	Detail string       `json:"detail,omitempty"`
}

// PurgeOwner is a guest process holding a page.
type PurgeOwner struct {
	PID  int    `json:"pid"`
	Comm string `json:"comm"`
}

// AuthRevokeResult answers POST /v1/auth/revoke.
type AuthRevokeResult struct {
	Grant AuthGrant `json:"grant"`
	Purge Purge     `json:"purge"`
}

// ServedFiles is GET /v1/files/open: guest processes holding served files
// open, from their fd tables read by introspection.
type ServedFiles struct {
	Shares []ServedShare `json:"shares"`
	Open   []ServedOpen  `json:"open"`
}

// ServedShare is one share the monitor serves.
type ServedShare struct {
	Name      string `json:"name"`
	HostDir   string `json:"host_dir"`
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
	// Requests, Decided and Denied count the share's 9P requests.
	Requests uint64 `json:"requests"`
	Decided  uint64 `json:"decided"`
	Denied   uint64 `json:"denied"`
	// DecideCPUNs is the monitor's CPU time spent attributing and
	// deciding the Decided requests (the serving thread's CPU clock).
	DecideCPUNs uint64 `json:"decide_cpu_ns"`
}

// ServedOpen is one descriptor of a guest process on a served file. The
// comm, exe and path are the guest's, exact: escape them where a person
// reads them.
type ServedOpen struct {
	Share string `json:"share"`
	PID   int    `json:"pid"`
	Comm  string `json:"comm"`
	Exe   string `json:"exe,omitempty"`
	UID   uint32 `json:"uid"`
	FD    int    `json:"fd"`
	Path  string `json:"path"`
	Mode  string `json:"mode"`
}
