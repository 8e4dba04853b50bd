package monitor

import "fmt"

// callARM64 is AAPCS64 as the arm64 kernel uses it, for kernel calls from
// below (inject.go) on arm64 guests: arguments in x0-x5, the return
// address in x30 (set to the safe point, so that the function's ret comes
// back to its breakpoint), the result in x0. Every general register, sp,
// pc and cpsr (PSTATE: flags, the interrupt mask) is put back after the
// call, cpsr last. The safe point is the same as on x86-64: the first
// instruction of hrtimer_interrupt, which arm64 calls from the arch
// timer's interrupt handler in hard-interrupt context (DAIF.I set), with
// no spinlock a signal takes held. The call's stack is 16-byte aligned
// (sp alignment is checked by the hardware at EL1 when SCTLR_EL1.SA is
// set), callFrameGap below the interrupted sp on the IRQ stack. With
// pointer authentication the called function signs and checks x30 against
// the same sp, so the plain return address works with or without it.
var callARM64 = func() *callABI {
	a := &callABI{args: []string{"x0", "x1", "x2", "x3", "x4", "x5"}, pc: "pc", sp: "sp", ret: "x0", link: "x30"}
	for i := 0; i <= 30; i++ {
		a.saved = append(a.saved, fmt.Sprintf("x%d", i))
	}
	a.saved = append(a.saved, "sp", "pc", "cpsr")
	return a
}()
