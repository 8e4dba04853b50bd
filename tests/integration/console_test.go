package integration

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

// TestConsole attaches to the shared VM's serial console through the API,
// types a command into the guest's console shell and reads its output.
func TestConsole(t *testing.T) {
	needShared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := client(sharedVM).Console(ctx, 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Replay shows recent output (the boot's ready marker, if still recent)
	// without waiting; then the shell answers a computed string.
	if _, err := conn.Write([]byte("\necho console-$((6*7))\n")); err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(got.String(), "console-42") {
		_ = conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil && err != io.EOF && !strings.Contains(err.Error(), "timeout") {
			t.Fatalf("console read: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("no answer from the console shell; got:\n%s", got.String())
		}
	}
}

// TestConsoleCLI drives `gatevisor console` with piped input, as a script
// would, and checks that the guest's answer comes back on its stdout.
func TestConsoleCLI(t *testing.T) {
	needShared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := gvCmd(ctx, nil, "console", sharedVM, "--replay", "0")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out syncBuffer
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	_, _ = io.WriteString(stdin, "\necho cli-$((40+2))\n")
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(out.String(), "cli-42") {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			t.Fatalf("no answer through gatevisor console; got:\n%s", out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Ctrl-] detaches.
	_, _ = stdin.Write([]byte{0x1d})
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("gatevisor console did not exit after Ctrl-]")
	}
}
