package monitor

import (
	"encoding/binary"
	"testing"
)

// The kernel call's frame on each calling convention: arm64 keeps sp
// 16-byte aligned and puts the return address in x30 (no memory
// written), and the call has returned when sp is back where the function
// found it; x86-64 pushes the return address 8 bytes off alignment, and
// ret pops it.
func TestCallFrames(t *testing.T) {
	const sp, at = 0xffff800008003e78, 0xffff8000081a2b40
	frame, mem := callARM64.frame(sp, at)
	if frame != (sp-callFrameGap)&^0xf || frame&0xf != 0 || mem != nil {
		t.Errorf("arm64 frame %#x, memory % x", frame, mem)
	}
	if !callARM64.returned(frame, frame) || callARM64.returned(frame+8, frame) {
		t.Error("arm64: returned is sp == frame")
	}
	if callARM64.link != "x30" || callARM64.ret != "x0" || callARM64.args[2] != "x2" {
		t.Errorf("arm64 convention: %+v", callARM64)
	}
	// Every general register, sp, pc and cpsr, cpsr last.
	if n := len(callARM64.saved); n != 34 || callARM64.saved[n-1] != "cpsr" || callARM64.saved[30] != "x30" {
		t.Errorf("arm64 saved registers: %v", callARM64.saved)
	}
	frame, mem = callX86.frame(sp, at)
	if frame != ((sp-callFrameGap)&^0xf)-8 || len(mem) != 8 || binary.LittleEndian.Uint64(mem) != at {
		t.Errorf("x86-64 frame %#x, memory % x", frame, mem)
	}
	if !callX86.returned(frame+8, frame) || callX86.returned(frame, frame) {
		t.Error("x86-64: returned is rsp == frame+8")
	}
	saved := map[string]uint64{}
	for i, r := range callARM64.saved {
		saved[r] = uint64(i)
	}
	vals := callARM64.regValues(saved)
	if len(vals) != len(callARM64.saved) || vals[len(vals)-1].Name != "cpsr" || vals[5].Value != 5 {
		t.Errorf("regValues: %v", vals)
	}
}
