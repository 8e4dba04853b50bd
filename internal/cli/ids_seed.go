package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/gatevisor/gatevisor/internal/ids"
	"github.com/gatevisor/gatevisor/internal/termtext"
)

// printSyscallAddresses prints ids syscalls --addresses: one line per
// table entry, the live handler address in hex without 0x (8 digits for
// a 32-bit kernel, 16 for a 64-bit one) and the symbol it points to, as
// the source paper's ids syscall printed them on 32-bit ARM:
//
//	c001b10c sys_exit
//	c00181a8 sys_fork
//
// An entry that is hooked (or that points nowhere the kernel names) says
// so after the name, and the exit code is 1, as for the table form.
func printSyscallAddresses(w io.Writer, _ string, raw json.RawMessage) error {
	var r ids.SyscallReport
	if err := json.Unmarshal(raw, &r); err != nil {
		return fmt.Errorf("decode syscalls: %w", err)
	}
	width := 8
	for _, e := range r.Entries {
		if e.Addr>>32 != 0 || e.SlotAddr>>32 != 0 {
			width = 16
		}
	}
	for _, e := range r.Entries {
		name := e.Symbol
		if name == "" {
			name = "?"
		}
		fmt.Fprintf(w, "%0*x %s", width, e.Addr, termtext.Escape(name))
		if e.Hooked {
			fmt.Fprintf(w, "  HOOKED: %s", termtext.Escape(e.Reason))
		}
		fmt.Fprintln(w)
	}
	return syscallsExit(&r)
}
