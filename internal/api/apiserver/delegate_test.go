package apiserver

import (
	"context"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/api/apiclient"
)

func TestParseOnBehalfOf(t *testing.T) {
	for _, tc := range []struct {
		in       string
		uid, gid uint32
		ok       bool
	}{
		{"1000:1000", 1000, 1000, true},
		{"0:0", 0, 0, true},
		{"4294967294:5", 4294967294, 5, true},
		{"4294967295:5", 0, 0, false}, // the kernel's "no id"
		{"4294967296:5", 0, 0, false},
		{"1000", 0, 0, false},
		{"1000:", 0, 0, false},
		{":1000", 0, 0, false},
		{"-1:0", 0, 0, false},
		{"+1:0", 0, 0, false},
		{" 1:0", 0, 0, false},
		{"1:0:0", 0, 0, false},
		{"0x10:0", 0, 0, false},
	} {
		uid, gid, err := api.ParseOnBehalfOf(tc.in)
		if (err == nil) != tc.ok || uid != tc.uid || gid != tc.gid {
			t.Errorf("ParseOnBehalfOf(%q) = %d, %d, %v; want %d, %d, ok %v", tc.in, uid, gid, err, tc.uid, tc.gid, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "UID:GID") {
			t.Errorf("ParseOnBehalfOf(%q): %v does not say what to give", tc.in, err)
		}
		if tc.ok && api.FormatOnBehalfOf(uid, gid) != tc.in {
			t.Errorf("FormatOnBehalfOf(%d, %d) = %q, want %q", uid, gid, api.FormatOnBehalfOf(uid, gid), tc.in)
		}
	}
}

// TestOnBehalfOfFromRoot: a root peer's header makes the named user the
// caller Authorize and the api.VM see (with the peer's pid, Delegated);
// without Authorize the owner-or-root rule judges that user.
func TestOnBehalfOfFromRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the header is honoured only from root; the CI runs as root (TestOnBehalfOfFromOthers covers other callers)")
	}
	vm := &fakeVM{}
	az := &authzRecorder{deny: func(a string) bool { return a == "proc.kill" }}
	sock := listen(t, vm, Options{Authorize: az.authorize})
	ctx := context.Background()
	c := apiclient.New(sock).OnBehalfOf(4242, 4343)
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	_, err := c.Proc(ctx, "kill", api.ProcRequest{PID: 42})
	if !api.IsCode(err, api.CodeForbidden) || !strings.Contains(err.Error(), "proc.kill refused for uid 4242 (gid 4343, through root's pid") {
		t.Errorf("a refused delegated call: %v", err)
	}
	want := api.Caller{UID: 4242, GID: 4343, PID: int32(os.Getpid()), Delegated: true}
	_, who := az.get()
	if diff := cmp.Diff([]api.Caller{want, want}, who); diff != "" {
		t.Errorf("Authorize's callers (-want +got):\n%s", diff)
	}
	vm.mu.Lock()
	got := vm.caller
	vm.mu.Unlock()
	if got != want {
		t.Errorf("the api.VM saw %+v, want %+v", got, want)
	}
	// Without the header, root is itself.
	if _, err := apiclient.New(sock).Status(ctx); err != nil {
		t.Fatal(err)
	}
	if _, who = az.get(); who[len(who)-1] != (api.Caller{UID: 0, GID: uint32(os.Getgid()), PID: int32(os.Getpid())}) {
		t.Errorf("without the header: %+v", who[len(who)-1])
	}

	// The owner-or-root rule applies to the user named.
	owner := listen(t, &fakeVM{}, Options{})
	if _, err := apiclient.New(owner).OnBehalfOf(4242, 4242).Status(ctx); !api.IsCode(err, api.CodeForbidden) || !strings.Contains(err.Error(), "uid 4242") {
		t.Errorf("a user neither owner nor root, through root: %v", err)
	}
	if _, err := apiclient.New(owner).OnBehalfOf(0, 0).Status(ctx); err != nil {
		t.Errorf("root through root: %v", err)
	}

	// A malformed or repeated header is a bad request, never a guess.
	hc := unixHTTP(sock)
	for _, h := range [][]string{{"4242"}, {"x:y"}, {"1:1", "2:2"}} {
		req, _ := http.NewRequest("GET", "http://gatevisor/v1/status", nil)
		req.Header[api.OnBehalfOfHeader] = h
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("header %q: %d, want 400", h, resp.StatusCode)
		}
	}
}

// TestOnBehalfOfFromOthers: a peer that is not root may not name another
// user; its request is refused with a message that says why, and neither
// Authorize nor the api.VM is asked.
func TestOnBehalfOfFromOthers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another uid; the CI runs as root")
	}
	const uid, gid = 12345, 12346
	dir := t.TempDir()
	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "client.test")
	data, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	vm := &fakeVM{}
	az := &authzRecorder{deny: func(string) bool { return false }}
	s := New(vm, Options{Authorize: az.authorize, Shared: true})
	sock := filepath.Join(dir, "api.sock")
	if err := s.Listen(sock); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Shutdown(context.Background()) })
	for _, as := range []string{"0:0", "12345:12346"} {
		cmd := exec.Command(bin, "-test.run=^TestHelperClient$")
		cmd.Dir = "/"
		cmd.Env = []string{"GATEVISOR_TEST_CLIENT=" + sock, "GATEVISOR_TEST_ON_BEHALF_OF=" + as}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		if !strings.Contains(string(out), "RESULT forbidden: vm.status refused: "+api.OnBehalfOfHeader+" is honoured only from root (uid 0), and this caller is uid 12345") {
			t.Errorf("uid %d claiming %s: %s", uid, as, out)
		}
	}
	if asked, _ := az.get(); len(asked) != 0 {
		t.Errorf("Authorize was asked %v", asked)
	}
	if calls := vm.Calls(); len(calls) != 0 {
		t.Errorf("the api.VM was called: %v", calls)
	}
}
