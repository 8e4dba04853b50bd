package gdbrsp

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Registers returns the registers of the target description, sorted by
// number, or nil when the stub offers no description.
func (c *Client) Registers() []Register {
	if c.tdesc == nil {
		return nil
	}
	return c.tdesc.Registers
}

// Register looks a register up by name in the target description.
func (c *Client) Register(name string) (Register, bool) {
	if c.tdesc == nil {
		return Register{}, false
	}
	return c.tdesc.Register(name)
}

// ReadRegisterBytes reads one register of the current vCPU with a 'p'
// packet and returns its bytes in target (little-endian on x86) order.
func (c *Client) ReadRegisterBytes(ctx context.Context, name string) ([]byte, error) {
	reg, ok := c.Register(name)
	if !ok {
		return nil, fmt.Errorf("gdbrsp: read register %s: %w", name, ErrUnknownRegister)
	}
	r, err := c.command(ctx, "p"+strconv.FormatInt(int64(reg.Num), 16))
	if err != nil {
		return nil, fmt.Errorf("gdbrsp: read register %s: %w", name, err)
	}
	if len(r) != reg.BitSize/4 {
		return nil, fmt.Errorf("gdbrsp: read register %s: %w: %d hex digits, want %d", name, ErrProtocol, len(r), reg.BitSize/4)
	}
	if bytes.Count(r, []byte{'x'}) == len(r) {
		return nil, fmt.Errorf("gdbrsp: read register %s: %w", name, ErrRegisterUnavailable)
	}
	b, err := decodeHex(r)
	if err != nil {
		return nil, fmt.Errorf("gdbrsp: read register %s: %w", name, err)
	}
	return b, nil
}

// ReadRegister reads a register of at most 64 bits of the current vCPU.
func (c *Client) ReadRegister(ctx context.Context, name string) (uint64, error) {
	if reg, ok := c.Register(name); ok && reg.BitSize > 64 {
		return 0, fmt.Errorf("gdbrsp: read register %s: %w", name, ErrRegisterTooWide)
	}
	b, err := c.ReadRegisterBytes(ctx, name)
	if err != nil {
		return 0, err
	}
	return leUint(b), nil
}

func leUint(b []byte) uint64 {
	var buf [8]byte
	copy(buf[:], b)
	return binary.LittleEndian.Uint64(buf[:])
}

// hexLE decodes at most 8 little-endian bytes in hex, as leUint(decodeHex(s))
// without the slice (every stop decodes every register).
func hexLE(s []byte) (uint64, error) {
	if len(s)%2 != 0 || len(s) > 16 {
		return 0, fmt.Errorf("%w: bad hex %q", ErrProtocol, truncate(s))
	}
	var v uint64
	for i := 0; i < len(s); i += 2 {
		hi, ok1 := fromHex(s[i])
		lo, ok2 := fromHex(s[i+1])
		if !ok1 || !ok2 {
			return 0, fmt.Errorf("%w: bad hex %q", ErrProtocol, truncate(s))
		}
		v |= uint64(hi<<4|lo) << (4 * i)
	}
	return v, nil
}

// ReadRegisters reads all registers of the current vCPU with one 'g'
// packet and returns those of at most 64 bits by name. Registers the stub
// reports as unavailable, or that the reply does not reach, are absent.
func (c *Client) ReadRegisters(ctx context.Context) (map[string]uint64, error) {
	var out map[string]uint64
	if c.tdesc != nil {
		out = make(map[string]uint64, len(c.tdesc.byName))
	}
	if err := c.ReadRegistersInto(ctx, out); err != nil {
		return nil, err
	}
	return out, nil
}

// ReadRegistersInto is ReadRegisters into out, which it empties first: a
// caller that reads the registers at every stop reuses one map (a map of
// the ~50 registers allocated per stop was a tenth of the monitor's
// share of an allowed call). On an error out holds nothing.
func (c *Client) ReadRegistersInto(ctx context.Context, out map[string]uint64) error {
	clear(out)
	if c.tdesc == nil {
		return fmt.Errorf("gdbrsp: read registers: %w: no target description", ErrUnsupported)
	}
	r, err := c.command(ctx, "g")
	if err != nil {
		return fmt.Errorf("gdbrsp: read registers: %w", err)
	}
	if err := decodeGReplyInto(c.tdesc, r, out); err != nil {
		clear(out)
		return err
	}
	return nil
}

// decodeGReplyInto splits a 'g' reply into registers, into out. Pure;
// bounded by the description's register count.
func decodeGReplyInto(td *TargetDescription, r []byte, out map[string]uint64) error {
	if len(r)%2 != 0 {
		return fmt.Errorf("gdbrsp: read registers: %w: odd-length reply", ErrProtocol)
	}
	for _, reg := range td.Registers {
		if reg.Offset < 0 || reg.BitSize > 64 {
			continue
		}
		if _, named := td.byName[reg.Name]; !named {
			continue // a name given twice (parseTargetDescription)
		}
		lo, hi := 2*reg.Offset, 2*(reg.Offset+reg.BitSize/8)
		if hi > len(r) {
			continue
		}
		field := r[lo:hi]
		if bytes.IndexByte(field, 'x') >= 0 {
			continue
		}
		v, err := hexLE(field)
		if err != nil {
			return fmt.Errorf("gdbrsp: read registers: %s: %w", reg.Name, err)
		}
		out[reg.Name] = v
	}
	return nil
}

// Threads lists the stub's thread ids (qfThreadInfo/qsThreadInfo). In
// QEMU system emulation each vCPU is a thread with id vCPU index + 1.
func (c *Client) Threads(ctx context.Context) ([]int, error) {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	var ids []int
	req := "qfThreadInfo"
	for range maxThreads + 1 {
		r, err := c.commandLocked(ctx, []byte(req))
		if err != nil {
			return nil, fmt.Errorf("gdbrsp: list threads: %w", err)
		}
		if r[0] == 'l' {
			return ids, nil
		}
		if r[0] != 'm' {
			return nil, fmt.Errorf("gdbrsp: list threads: %w: reply %q", ErrProtocol, truncate(r))
		}
		for f := range bytes.SplitSeq(r[1:], []byte{','}) {
			tid, err := parseThreadID(f)
			if err != nil {
				return nil, fmt.Errorf("gdbrsp: list threads: %w", err)
			}
			if len(ids) >= maxThreads {
				return nil, fmt.Errorf("gdbrsp: list threads: %w: more than %d", ErrProtocol, maxThreads)
			}
			ids = append(ids, tid)
		}
		req = "qsThreadInfo"
	}
	return nil, fmt.Errorf("gdbrsp: list threads: %w: no end of list", ErrProtocol)
}

// SetThread selects the thread that register and memory accesses use (Hg).
func (c *Client) SetThread(ctx context.Context, tid int) error {
	if tid <= 0 {
		return fmt.Errorf("gdbrsp: set thread %d: invalid thread id", tid)
	}
	r, err := c.command(ctx, "Hg"+strconv.FormatInt(int64(tid), 16))
	if err == nil {
		err = expectOK(r)
	}
	if err != nil {
		return fmt.Errorf("gdbrsp: set thread %d: %w", tid, err)
	}
	return nil
}

// SetVCPU selects vCPU n (0-based, QEMU's cpu_index) for register and
// memory accesses; in QEMU its thread id is n+1.
func (c *Client) SetVCPU(ctx context.Context, n int) error {
	if n < 0 {
		return fmt.Errorf("gdbrsp: set vCPU %d: negative index", n)
	}
	return c.SetThread(ctx, n+1)
}

// SetPhysicalMemoryMode switches QEMU's memory accesses ('m', 'M', 'X')
// between guest-virtual addresses as the current vCPU sees them (false, the
// default) and guest-physical addresses (true), with QEMU's
// "Qqemu.PhyMemMode" packet. Other stubs answer ErrUnsupported.
func (c *Client) SetPhysicalMemoryMode(ctx context.Context, physical bool) error {
	req := "Qqemu.PhyMemMode:0"
	if physical {
		req = "Qqemu.PhyMemMode:1"
	}
	r, err := c.command(ctx, req)
	if err == nil {
		err = expectOK(r)
	}
	if err != nil {
		return fmt.Errorf("gdbrsp: set physical memory mode %v: %w", physical, err)
	}
	return nil
}

// readChunk is the most bytes asked for by one 'm' packet: the hex reply
// must fit the stub's packet buffer (QEMU refuses more than PacketSize/2).
func (c *Client) readChunk() int { return c.packetSize/2 - 8 }

// ReadMemory fills buf from target memory at addr, in PacketSize chunks.
// On error, the bytes before the failing chunk are already in buf.
func (c *Client) ReadMemory(ctx context.Context, addr uint64, buf []byte) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	for done := 0; done < len(buf); {
		n := min(len(buf)-done, c.readChunk())
		a := addr + uint64(done)
		r, err := c.commandLocked(ctx, fmt.Appendf(nil, "m%x,%x", a, n))
		if err != nil {
			return fmt.Errorf("gdbrsp: read memory %#x+%d: %w", a, n, err)
		}
		if len(r) > 2*n {
			return fmt.Errorf("gdbrsp: read memory %#x+%d: %w: %d bytes returned", a, n, ErrProtocol, len(r)/2)
		}
		b, err := decodeHex(r)
		if err != nil {
			return fmt.Errorf("gdbrsp: read memory %#x+%d: %w", a, n, err)
		}
		// A short (but non-empty) reply is allowed: ask again for the rest.
		copy(buf[done:], b)
		done += len(b)
	}
	return nil
}

// WriteMemory writes data to target memory at addr in PacketSize chunks,
// with binary 'X' packets when the stub supports them and hex 'M' packets
// otherwise (QEMU 7.2 has no 'X').
func (c *Client) WriteMemory(ctx context.Context, addr uint64, data []byte) error {
	c.cmdMu.Lock()
	defer c.cmdMu.Unlock()
	for done := 0; done < len(data); {
		a := addr + uint64(done)
		n, err := c.writeChunk(ctx, a, data[done:])
		if err != nil {
			return fmt.Errorf("gdbrsp: write memory %#x: %w", a, err)
		}
		done += n
	}
	return nil
}

// writeChunk writes as much of data as fits one packet and returns how
// many bytes that was.
//
// Preconditions: c.cmdMu held.
func (c *Client) writeChunk(ctx context.Context, addr uint64, data []byte) (int, error) {
	const header = 40 // "X" + 16 hex digits + "," + 8 hex digits + ":" and slack
	budget := c.packetSize - header
	if c.xWrites.Load() >= 0 {
		// Pack as many bytes as fit once escaped.
		n, size := 0, 0
		for n < len(data) {
			w := 1
			if needsEscape(data[n]) {
				w = 2
			}
			if size+w > budget {
				break
			}
			size += w
			n++
		}
		req := fmt.Appendf(nil, "X%x,%x:", addr, n)
		req = escapeBinary(req, data[:n])
		r, err := c.commandLocked(ctx, req)
		switch {
		case errors.Is(err, ErrUnsupported):
			c.xWrites.Store(-1) // fall back to M below
		case err != nil:
			return 0, err
		default:
			c.xWrites.Store(1)
			return n, expectOK(r)
		}
	}
	n := min(len(data), budget/2)
	req := fmt.Appendf(nil, "M%x,%x:%x", addr, n, data[:n])
	r, err := c.commandLocked(ctx, req)
	if err != nil {
		return 0, err
	}
	return n, expectOK(r)
}

// BreakpointKind selects the Z/z packet type.
type BreakpointKind int

const (
	// Software is a software breakpoint (Z0). Under TCG QEMU implements it
	// without touching guest memory; under KVM it writes an int3 into guest
	// memory, which the guest can see.
	Software BreakpointKind = 0
	// Hardware is a hardware breakpoint (Z1).
	Hardware BreakpointKind = 1
	// WriteWatch is a write watchpoint (Z2), "watch" in the stop reply:
	// the vCPU stops after an instruction that wrote the watched bytes.
	WriteWatch BreakpointKind = 2
	// ReadWatch is a read watchpoint (Z3): the vCPU stops after an
	// instruction that read the watched bytes, with a T05 stop reply whose
	// "rwatch" pair names the address. QEMU offers it under TCG only (x86
	// debug registers cannot watch reads alone).
	ReadWatch BreakpointKind = 3
	// AccessWatch is a read-or-write watchpoint (Z4), "awatch" in the stop
	// reply. Under TCG QEMU checks it only on accesses to the watched
	// page, not on every instruction; under KVM it takes one of the four
	// debug registers.
	AccessWatch BreakpointKind = 4
)

func (k BreakpointKind) valid() bool {
	return k == Software || k == Hardware || k == WriteWatch || k == ReadWatch || k == AccessWatch
}

// SetBreakpoint inserts a breakpoint at addr, a virtual (in real mode:
// linear) address as the vCPUs see it. A hit shows up as a T05 stop reply
// from WaitStop after Continue.
func (c *Client) SetBreakpoint(ctx context.Context, kind BreakpointKind, addr uint64) error {
	return c.breakpoint(ctx, 'Z', kind, addr)
}

// ClearBreakpoint removes a breakpoint set by SetBreakpoint.
func (c *Client) ClearBreakpoint(ctx context.Context, kind BreakpointKind, addr uint64) error {
	return c.breakpoint(ctx, 'z', kind, addr)
}

// SetWatchpoint inserts a watchpoint of kind (WriteWatch, ReadWatch, AccessWatch) on the n bytes
// at addr (n: 1, 2, 4 or 8).
func (c *Client) SetWatchpoint(ctx context.Context, kind BreakpointKind, addr uint64, n int) error {
	return c.breakpointLen(ctx, 'Z', kind, addr, n)
}

// ClearWatchpoint removes a watchpoint set by SetWatchpoint.
func (c *Client) ClearWatchpoint(ctx context.Context, kind BreakpointKind, addr uint64, n int) error {
	return c.breakpointLen(ctx, 'z', kind, addr, n)
}

func (c *Client) breakpoint(ctx context.Context, op byte, kind BreakpointKind, addr uint64) error {
	// Length 1: the x86 breakpoint length (int3 is one byte).
	return c.breakpointLen(ctx, op, kind, addr, 1)
}

func (c *Client) breakpointLen(ctx context.Context, op byte, kind BreakpointKind, addr uint64, n int) error {
	if !kind.valid() {
		return fmt.Errorf("gdbrsp: breakpoint %#x: invalid kind %d", addr, kind)
	}
	if n != 1 && n != 2 && n != 4 && n != 8 {
		return fmt.Errorf("gdbrsp: breakpoint %#x: length %d is not 1, 2, 4 or 8", addr, n)
	}
	r, err := c.command(ctx, fmt.Sprintf("%c%d,%x,%x", op, kind, addr, n))
	if err == nil {
		err = expectOK(r)
	}
	if err != nil {
		verb := "set"
		if op == 'z' {
			verb = "clear"
		}
		return fmt.Errorf("gdbrsp: %s breakpoint Z%d at %#x: %w", verb, kind, addr, err)
	}
	return nil
}
