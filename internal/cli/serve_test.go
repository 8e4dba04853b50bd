package cli

import (
	"context"
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

func TestServePeerAuthorization(t *testing.T) {
	d := &daemon{token: strings.Repeat("a", 64)}
	h := d.authorized(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	for _, tc := range []struct {
		name string
		peer any // the unix-socket peer's uid in the context; nil over TCP
		want int
	}{
		{"tcp without token", nil, http.StatusUnauthorized},
		{"our own uid on the socket", uint32(os.Geteuid()), http.StatusNoContent},
		{"root on the socket", uint32(0), http.StatusNoContent},
		{"another uid on the socket", uint32(4242), http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		if tc.peer != nil {
			req = req.WithContext(context.WithValue(req.Context(), peerKey{}, tc.peer))
		}
		rec := httptest.NewRecorder()
		h(rec, req)
		if tc.name == "another uid on the socket" && os.Geteuid() == 4242 {
			continue
		}
		if rec.Code != tc.want {
			t.Errorf("%s: %d, want %d", tc.name, rec.Code, tc.want)
		}
	}
	// The socket: ours, mode 0600; a planted file in its place is refused.
	dir := t.TempDir()
	p := filepath.Join(dir, "serve.sock")
	l, err := listenUnix(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v", fi, err)
	}
	if _, err := listenUnix(p); err == nil || !strings.Contains(err.Error(), "another gatevisor serve") {
		t.Errorf("a second daemon on the same socket: %v", err)
	}
	l.Close()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(p); err == nil || !strings.Contains(err.Error(), "not a socket of ours") {
		t.Errorf("a regular file in the socket's place: %v", err)
	}
}
