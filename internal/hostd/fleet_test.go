package hostd

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/gatevisor/gatevisor/internal/fleet"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// runDaemon runs Run(cfg) until the test ends; it returns the error
// channel.
func runDaemon(t *testing.T, cfg Config) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("the daemon did not stop")
		}
	})
	return done
}

// TestEmbeddedFleet: serve embeds NATS with JetStream, advertises it in
// fleet.json with its token file, and refuses clients without the token.
func TestEmbeddedFleet(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("GATEVISOR_RUNTIME_DIR", filepath.Join(dir, "run"))
	state := filepath.Join(dir, "state")
	runDaemon(t, Config{Listen: "127.0.0.1:0", StateDir: state, Log: io.Discard, NATSListen: "127.0.0.1:0"})
	var l fleet.Local
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		if l, err = fleet.ReadLocal(state); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no fleet.json: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if l.TokenFile != filepath.Join(state, "serve.token") {
		t.Errorf("token file %q", l.TokenFile)
	}
	tok, err := fleet.ReadToken(l.TokenFile)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := fleet.Conn{URL: l.URL, Token: tok}.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fleet.EnsureStreams(ctx, js, fleet.StreamOptions{}); err != nil {
		t.Fatalf("JetStream on the embedded server: %v", err)
	}
	if _, err := nats.Connect(l.URL, nats.Token("wrong"), nats.Timeout(2*time.Second)); err == nil {
		t.Error("a client with a wrong token was admitted")
	}
	if _, err := nats.Connect(l.URL, nats.Timeout(2*time.Second)); err == nil {
		t.Error("a client without a token was admitted")
	}
}

// TestFleetPortTaken: the default NATS address taken leaves serve running
// without a fleet, saying so; an address the user chose fails it.
func TestFleetPortTaken(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	dir := t.TempDir()
	t.Setenv("GATEVISOR_RUNTIME_DIR", filepath.Join(dir, "run"))
	var log lockedBuffer
	runDaemon(t, Config{Listen: "127.0.0.1:0", StateDir: filepath.Join(dir, "a"), Log: &log, NATSListen: busy.Addr().String(), NATSListenDefault: true})
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(log.String(), "dashboard on") {
		if time.Now().After(deadline) {
			t.Fatalf("serve did not start: %s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(log.String(), "warning: no fleet") {
		t.Errorf("no warning: %s", log.String())
	}
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), Config{Listen: "127.0.0.1:0", StateDir: filepath.Join(dir, "b"), Log: io.Discard, NATSListen: busy.Addr().String()})
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "--nats-listen") {
			t.Errorf("a chosen address taken: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("serve ran with its chosen NATS address taken")
	}
}
