// Package gdbrsp is a client for the GDB remote serial protocol, written
// for QEMU's gdbstub: the monitor uses it to read vCPU registers (cr3,
// gs_base, ...) and guest memory, and to set breakpoints.
//
// It is hand-written because no usable Go library exists: Go's RSP code lives
// inside debuggers (delve's gdbserial) and is tied to their process model.
// Here every byte from the stub is untrusted: packets are
// capped at [MaxPacketSize] before and after run-length expansion, every
// loop is bounded, and malformed input is an error wrapping [ErrProtocol],
// never a panic. Packet framing, checksums, acknowledgements (with
// QStartNoAckMode when offered), run-length decoding, binary escaping for
// 'X' packets and qXfer, and PacketSize-chunked memory access are handled.
//
// # QEMU's gdbstub (checked against QEMU 7.2)
//
// The stub is all-stop and the client must be driven that way:
//
//   - When a client connects, QEMU pauses the VM. When it disconnects
//     without 'D', the VM stays paused; [Client.Detach] sends 'D', which
//     resumes it (even a VM started with -S).
//   - While the VM runs (after 'c', or after a QMP "cont" the client cannot
//     see), any byte QEMU receives stops the VM and is then discarded. A
//     request sent then is lost and only a stop reply (T02) comes back.
//     So: interrupt, do the work, continue. [Client.WithStopped] does this;
//     [Client.Halt] stops the VM whoever resumed it.
//   - QEMU 7.2 sends a stop reply whenever the VM stops with a client
//     attached, including for QMP "stop" (QEMU 8.1 and later only after
//     'c', 's' or 0x03); the client treats every stop reply as an
//     asynchronous event (see [Client.WaitStop]) and never as the reply to
//     another request. Prefer resuming through this client over QMP "cont"
//     while it is attached, so that it knows the VM runs.
//   - Packets sent in one write are taken in order, a 'c' among them
//     too, but once the VM runs every byte stops it, an acknowledgement
//     of an answer too (gdb_read_byte ignores '+' only while its last
//     packet is unacknowledged, and the next '$' has already dropped
//     that): [Client.ContinueWithRegisters] sends P, ..., c in one write
//     and leaves the answers that come after the continue unacknowledged.
//   - '?' makes QEMU remove all breakpoints, so this client never sends it.
//   - 'p' only works after the client fetched target.xml, which the
//     handshake always does.
//   - Memory accesses use virtual addresses as the current vCPU (Hg) sees
//     them; "Qqemu.PhyMemMode:1" ([Client.SetPhysicalMemoryMode]) switches
//     them to guest-physical addresses.
//   - Thread ids are vCPU index + 1 ([Client.SetVCPU]).
//   - QEMU 7.2 answers qSupported with
//     "PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+":
//     4096-byte packets, no QStartNoAckMode (acks stay on), and it does not
//     implement 'X' (writes fall back to 'M').
//
// The x86-64 target description of QEMU 7.2 ("target.xml" with
// architecture i386:x86-64, which includes "i386-64bit.xml", feature
// org.gnu.gdb.i386.core) numbers its 66 registers as follows; all of them
// are in the 'g' reply (608 bytes):
//
//	0-15   rax rbx rcx rdx rsi rdi rbp rsp r8-r15   64 bits
//	16     rip                                      64
//	17     eflags                                   32
//	18-23  cs ss ds es fs gs                        32 (selectors only)
//	24-26  fs_base gs_base k_gs_base                64
//	27-32  cr0 cr2 cr3 cr4 cr8 efer                 64
//	33-40  st0-st7                                  80 (ReadRegisterBytes)
//	41-48  fctrl fstat ftag fiseg fioff foseg fooff fop  32, group float
//	49-64  xmm0-xmm15                               128 (ReadRegisterBytes)
//	65     mxcsr                                    32, group vector
//
// There are no segment bases other than fs/gs, no descriptor-table
// registers (gdtr, idtr), no debug registers and no MSRs besides efer and
// k_gs_base (the inactive GS base; swapgs exchanges it with gs_base).
// Byte order is assumed little-endian (x86).
package gdbrsp
