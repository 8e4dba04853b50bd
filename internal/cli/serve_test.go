package cli

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServeToken(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "serve.token")
	tok, err := serveToken(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 64 {
		t.Fatalf("token %q: want 64 hex digits", tok)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	again, err := serveToken(p)
	if err != nil || again != tok {
		t.Fatalf("the token was not kept: %q, %v", again, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := serveToken(p); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("a world-readable token file: %v", err)
	}
	link := filepath.Join(dir, "link.token")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if _, err := serveToken(link); err == nil {
		t.Fatal("a token file that is a symbolic link was accepted")
	}
}

func TestServeAuthorization(t *testing.T) {
	d := &daemon{token: strings.Repeat("a", 64)}
	h := d.handler()
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "Bearer " + strings.Repeat("b", 64), http.StatusUnauthorized},
		{"/events", "", http.StatusUnauthorized},
		{"/events", "Bearer " + strings.Repeat("a", 63), http.StatusUnauthorized},
		{"/", "", http.StatusOK},
	} {
		req := httptest.NewRequest(http.MethodGet, tc.path, nil)
		if tc.auth != "" {
			req.Header.Set("Authorization", tc.auth)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != tc.want {
			t.Errorf("GET %s with %q: %d, want %d", tc.path, tc.auth, rec.Code, tc.want)
		}
	}
}
