package hostd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"

	"github.com/gatevisor/gatevisor/internal/dashboard"
)

// LoginSockets are the sockets gatevisor serve login tries, in order: the
// user's own daemon's (state directory dir), then the system daemon's.
func LoginSockets(dir string) []string {
	return []string{SocketPath(dir), DefaultLoginSocket}
}

// RequestLogin asks the daemon on the unix socket sock for a login link
// for this process's user (the daemon reads it from the socket's peer
// credentials).
func RequestLogin(ctx context.Context, sock string) (dashboard.Ticket, error) {
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://gatevisor-serve/login", nil)
	if err != nil {
		return dashboard.Ticket{}, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return dashboard.Ticket{}, fmt.Errorf("serve login: %s: %w (is gatevisor serve running?)", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return dashboard.Ticket{}, fmt.Errorf("serve login: %s: %w", sock, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return dashboard.Ticket{}, fmt.Errorf("serve login: %s refused: %s", sock, e.Error)
		}
		return dashboard.Ticket{}, fmt.Errorf("serve login: %s: %s", sock, resp.Status)
	}
	var t dashboard.Ticket
	if err := json.Unmarshal(body, &t); err != nil || t.URL == "" {
		return dashboard.Ticket{}, fmt.Errorf("serve login: %s answered no login link: %q", sock, body)
	}
	return t, nil
}

// FindLoginSocket returns the first of socks that exists.
func FindLoginSocket(socks []string) (string, error) {
	for _, s := range socks {
		if _, err := os.Stat(s); err == nil {
			return s, nil
		}
	}
	return "", errors.New("serve login: no gatevisor serve found: start one ('gatevisor serve'), or give its socket with --socket (looked at " + fmt.Sprint(socks) + ")")
}
