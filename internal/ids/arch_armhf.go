package ids

import (
	"errors"
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// ErrNotOnArch is returned for a query that does not run on the guest's
// architecture (armhf: armhfQueries), with the reason.
var ErrNotOnArch = errors.New("not applicable to this guest")

// armhfQueries are the queries a 32-bit ARM (armhf) guest answers: its
// walks of tasks, modules and the syscall table read 4-byte pointers; the
// others (threads, args, env, files, sockets, hooks) are the 64-bit walks
// and are refused rather than read wrong.
var armhfQueries = map[string]bool{"banner": true, "syscalls": true, "ps": true, "modules": true, "check": true}

const armhfOnly64 = "not implemented for 32-bit ARM (armhf) guests: this walk reads 64-bit pointers; armhf guests answer banner, syscalls, ps, modules and check"

// armhfNotChecked are the checks that do not run on an armhf guest, each
// with why: reported as not applicable, never as clean. Only the syscall
// table and the hidden-module cross-view run there.
var armhfNotChecked = map[string]string{
	CheckDispatch:       "32-bit ARM: vector_swi calls the handler straight from sys_call_table, which syscall-table checks; there is no dispatch code to compare (x86's x64_sys_call)",
	CheckInline:         "not implemented for armhf: the code comparison decodes x86 instructions only",
	CheckIDT:            "32-bit ARM has no IDT; its exception vectors (the vectors page at 0xffff0000) are not checked yet",
	CheckOpsTables:      "not implemented for armhf: the image facts hold no operation tables",
	CheckHiddenProcess:  "not implemented for armhf: the thread, PID-namespace and run-queue views are 64-bit walks (only the task list is read on 32-bit)",
	CheckCommExe:        "not implemented for armhf: it reads the thread view, a 64-bit walk",
	CheckUnexpectedRoot: "not implemented for armhf: it reads the thread view and the credentials, 64-bit walks",
	CheckCorrupt:        "not implemented for armhf: the object views it compares are 64-bit walks",
	CheckCPUHog:         "not implemented for armhf: it reads the thread view, a 64-bit walk",
	CheckCredentials:    "not implemented for armhf: the credential reader is a 64-bit walk",
	CheckGuestView:      "not implemented for armhf: the guest-view comparison needs sockets and executables, 64-bit walks",
	CheckHiddenSocket:   "not implemented for armhf: the socket walk reads 64-bit pointers",
	CheckFtrace:         "not implemented for armhf: the ftrace_ops walk reads 64-bit pointers",
	CheckKprobe:         "not implemented for armhf: the kprobe table walk reads 64-bit pointers",
	CheckLSM:            "not implemented for armhf: the LSM hook list walk reads 64-bit pointers",
	CheckTaskFlags:      "not implemented for armhf: it reads the thread view, a 64-bit walk",
}

// isARMHF reports whether the inspected kernel is 32-bit ARM.
func (i *Inspector) isARMHF() bool {
	return i.K != nil && i.K.Profile != nil && i.K.Profile.IsARMHF()
}

// notOnThisArch returns an error for a query the guest's architecture does
// not answer, or nil.
func (i *Inspector) notOnThisArch(query string) error {
	if i.isARMHF() && !armhfQueries[query] {
		return fmt.Errorf("%w: ids %s: %s", ErrNotOnArch, query, armhfOnly64)
	}
	return nil
}

// RunsOn reports whether check name runs on a guest of the profile's
// architecture (armhf: only the checks armhfNotChecked leaves out), so
// that a policy response to a check's findings is refused where the check
// never reports.
func RunsOn(prof *linux.Profile, name string) bool {
	if prof != nil && prof.IsARMHF() {
		return armhfNotChecked[name] == ""
	}
	return true
}
