package hostd

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gatevisor/gatevisor/internal/dashboard"
)

func TestToken(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "serve.token")
	tok, err := Token(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 64 {
		t.Fatalf("token %q: want 64 hex digits", tok)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", fi, err)
	}
	again, err := Token(p)
	if err != nil || again != tok {
		t.Fatalf("the token was not kept: %q, %v", again, err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Token(p); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Fatalf("a world-readable token file: %v", err)
	}
	link := filepath.Join(dir, "link.token")
	if err := os.Symlink(p, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Token(link); err == nil {
		t.Fatal("a token file that is a symbolic link was accepted")
	}
}

// testDaemon is a daemon over no VMs.
func testDaemon(t *testing.T) *daemon {
	t.Helper()
	d := newDaemon(strings.Repeat("a", 64), Config{}, "http://127.0.0.1:9464", dashboard.LoopbackHosts("127.0.0.1:9464"))
	d.vms = func() ([]dashboard.VM, error) { return nil, nil }
	return d
}

func TestAuthorization(t *testing.T) {
	h := testDaemon(t).handler()
	for _, tc := range []struct {
		path, auth string
		want       int
	}{
		{"/metrics", "", http.StatusUnauthorized},
		{"/metrics", "Bearer " + strings.Repeat("b", 64), http.StatusUnauthorized},
		{"/events", "", http.StatusUnauthorized},
		{"/events", "Bearer " + strings.Repeat("a", 63), http.StatusUnauthorized},
		{"/metrics", "Bearer " + strings.Repeat("a", 64), http.StatusOK},
		// The dashboard needs a session; the token is not one.
		{"/", "", http.StatusUnauthorized},
		{"/", "Bearer " + strings.Repeat("a", 64), http.StatusUnauthorized},
		{"/vm/x", "", http.StatusUnauthorized},
	} {
		req := httptest.NewRequest(http.MethodGet, "http://127.0.0.1:9464"+tc.path, nil)
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

func TestPeerAuthorization(t *testing.T) {
	d := testDaemon(t)
	h := d.authorized(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	for _, tc := range []struct {
		name string
		peer any // the unix-socket peer in the context; nil over TCP
		want int
	}{
		{"tcp without token", nil, http.StatusUnauthorized},
		{"our own uid on the socket", dashboard.Identity{UID: uint32(os.Geteuid())}, http.StatusNoContent},
		{"root on the socket", dashboard.Identity{UID: 0}, http.StatusNoContent},
		{"another uid on the socket", dashboard.Identity{UID: 4242}, http.StatusUnauthorized},
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
	l, err := listenUnix(p, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(p); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: %v %v", fi, err)
	}
	if _, err := listenUnix(p, 0o600); err == nil || !strings.Contains(err.Error(), "another gatevisor serve") {
		t.Errorf("a second daemon on the same socket: %v", err)
	}
	l.Close()
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := listenUnix(p, 0o600); err == nil || !strings.Contains(err.Error(), "not a socket of ours") {
		t.Errorf("a regular file in the socket's place: %v", err)
	}
}

// TestLoginOnlyOnUnixSockets: a login link is given on the unix sockets,
// to their peer, and never over TCP, whatever the request carries.
func TestLoginOnlyOnUnixSockets(t *testing.T) {
	d := testDaemon(t)
	for _, tc := range []struct {
		name string
		h    http.Handler
		peer any
		want int
	}{
		{"tcp", d.handler(), nil, http.StatusForbidden},
		{"tcp with the token", d.handler(), nil, http.StatusForbidden},
		{"serve.sock, root", d.socketHandler(), dashboard.Identity{UID: 0, GID: 0}, http.StatusOK},
		{"login socket, a user", d.loginHandler(), dashboard.Identity{UID: 4242, GID: 4243}, http.StatusOK},
		{"login socket without credentials", d.loginHandler(), nil, http.StatusForbidden},
	} {
		req := httptest.NewRequest(http.MethodPost, "http://127.0.0.1:9464/login", nil)
		if tc.name == "tcp with the token" {
			req.Header.Set("Authorization", "Bearer "+strings.Repeat("a", 64))
		}
		if tc.peer != nil {
			req = req.WithContext(context.WithValue(req.Context(), peerKey{}, tc.peer))
		}
		rec := httptest.NewRecorder()
		tc.h.ServeHTTP(rec, req)
		wantCode := tc.want
		if os.Geteuid() != 0 && tc.name == "login socket, a user" {
			wantCode = http.StatusForbidden // a daemon that is not root admits only itself and root
		}
		if rec.Code != wantCode {
			t.Errorf("%s: %d %s, want %d", tc.name, rec.Code, rec.Body.String(), wantCode)
			continue
		}
		if wantCode == http.StatusOK {
			var tk dashboard.Ticket
			if err := json.Unmarshal(rec.Body.Bytes(), &tk); err != nil || !strings.HasPrefix(tk.URL, "http://127.0.0.1:9464/login?ticket=") || tk.User != tc.peer {
				t.Errorf("%s: ticket %+v, %v", tc.name, tk, err)
			}
		}
	}
}

// TestServeAndLogin runs the daemon on real sockets and logs in through
// RequestLogin, then opens the link.
func TestServeAndLogin(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	t.Setenv("GATEVISOR_RUNTIME_DIR", filepath.Join(dir, "run"))
	go func() {
		done <- Run(ctx, Config{Listen: "127.0.0.1:0", StateDir: filepath.Join(dir, "state"), Log: io.Discard})
	}()
	sock := SocketPath(filepath.Join(dir, "state"))
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket after 10 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	tk, err := RequestLogin(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Jar: jar}
	resp, err := hc.Get(tk.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/" {
		t.Fatalf("the login link: %s at %s", resp.Status, resp.Request.URL)
	}
	// Used once.
	resp, err = http.Get(tk.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("the login link used again: %s", resp.Status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the socket is left after the daemon stopped: %v", err)
	}
	if _, err := RequestLogin(context.Background(), sock); err == nil || !strings.Contains(err.Error(), "is gatevisor serve running?") {
		t.Errorf("no daemon: %v", err)
	}
}
