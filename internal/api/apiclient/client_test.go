package apiclient

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/guestexec"
)

// The largest answer the client reads, an exec whose stdout and stderr are
// both at the agent's cap, fits under maxResponse: a cut body would be a
// JSON error ("unexpected end of JSON input") instead of the output.
func TestMaxResponseFitsTheLargestExec(t *testing.T) {
	if api.MaxExecOutput != guestexec.MaxOutput {
		t.Fatalf("api.MaxExecOutput %d, guestexec.MaxOutput %d: keep them equal", api.MaxExecOutput, guestexec.MaxOutput)
	}
	full := bytes.Repeat([]byte{0xff}, api.MaxExecOutput)
	b, err := json.Marshal(api.ExecResult{ExitCode: 255, Stdout: full, Stderr: full})
	if err != nil {
		t.Fatal(err)
	}
	if len(b) > maxResponse {
		t.Fatalf("an exec answer at the cap is %d bytes; the client reads at most %d", len(b), maxResponse)
	}
}
