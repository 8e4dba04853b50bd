package api

import (
	"fmt"
	"io/fs"
)

// MaxPolicySource caps a policy sent over the API.
const MaxPolicySource = 1 << 20

// MaxPolicyFiles caps the included files a PolicyRequest carries.
const MaxPolicyFiles = 64

// PolicyRequest loads a policy on a running VM (hot reload). Path names
// the file (its directory resolves includes); Source is its text. Files,
// when set, carries the files it includes by their path relative to Path's
// directory, and includes are then read from Files alone, never from the
// monitor's disk (a policy pushed from another host by the fleet); their
// sizes count against MaxPolicySource with Source's.
type PolicyRequest struct {
	Path   string            `json:"path"`
	Source string            `json:"source"`
	Files  map[string]string `json:"files,omitempty"`
}

// CheckFiles checks the bounds of r.Files: at most MaxPolicyFiles, valid
// relative paths, and with Source at most MaxPolicySource bytes.
func (r PolicyRequest) CheckFiles() error {
	if len(r.Files) > MaxPolicyFiles {
		return fmt.Errorf("files: %d included files, at most %d", len(r.Files), MaxPolicyFiles)
	}
	total := len(r.Source)
	for name, src := range r.Files {
		if !fs.ValidPath(name) || name == "." {
			return fmt.Errorf("files: %.80q is not a relative path inside the policy's directory", name)
		}
		total += len(name) + len(src)
	}
	if total > MaxPolicySource {
		return fmt.Errorf("source and files: larger than %d bytes", MaxPolicySource)
	}
	return nil
}

// Breakpoint is one syscall-gate breakpoint in place.
type Breakpoint struct {
	// Symbol is the function trapped; Site, when set, says how it is
	// trapped other than at its entry: a call to it in a caller
	// ("do_dentry_open+0xf3"), or a read watchpoint on its list head
	// ("read of security_hook_heads.file_open", Addr then the watched
	// address).
	Symbol string `json:"symbol"`
	Site   string `json:"site,omitempty"`
	// Watchpoint says the trap is a watchpoint on Addr, not a breakpoint.
	Watchpoint bool   `json:"watchpoint,omitempty"`
	Syscall    string `json:"syscall"`
	Addr       string `json:"addr"`
	PhysAddr   string `json:"phys_addr,omitempty"`
	// Classes are the event classes the trap decides (syscall, file,
	// exec, module).
	Classes []string `json:"classes,omitempty"`
	// For an execution breakpoint (not a watchpoint): Rules are the
	// policy statements that need it ("rule ptrace_attach (p.policy:75:3)")
	// and Cost what it costs guest code that never reaches it.
	Rules []string `json:"rules,omitempty"`
	Cost  string   `json:"cost,omitempty"`
	// Model says how an LSM hook is trapped: "own-entry" (a read
	// watchpoint on the gate's own entry in the hook's list, Entry its
	// hook field's address; Addr is then the list head, which carries a
	// write watchpoint) or "head" (a read watchpoint on the list head).
	Model string `json:"model,omitempty"`
	Entry string `json:"entry,omitempty"`
}

// PolicyResult says what a load changed.
type PolicyResult struct {
	Seq         uint64       `json:"seq"`
	Path        string       `json:"path"`
	Digest      string       `json:"digest,omitempty"` // the snapshot's sha256 over every file read
	Syscalls    []string     `json:"syscalls"`
	Breakpoints []Breakpoint `json:"breakpoints"`
	Missing     []string     `json:"missing,omitempty"`
	Removed     int          `json:"removed"`
	// TextRestored, when breakpoints were removed, says whether the guest
	// kernel text under them reads back byte for byte as before.
	TextRestored *bool `json:"text_restored,omitempty"`
}
