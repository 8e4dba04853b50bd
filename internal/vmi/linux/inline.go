package linux

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"sort"
	"sync"
)

// watchedFuncs are kernel functions rootkits commonly patch inline (a jmp
// over the function's first bytes, or anywhere in it) to hide what the
// guest's tools list: /proc/net's seq_show functions (sockets), the
// directory fillers and /proc readdirs (files and processes), the read
// and open paths, credential and module loading. Missing ones are skipped.
var watchedFuncs = []string{
	"tcp4_seq_show", "tcp6_seq_show", "udp4_seq_show", "udp6_seq_show", "raw_seq_show", "unix_seq_show",
	"packet_rcv", "tpacket_rcv", "packet_rcv_spkt",
	"filldir", "filldir64", "fillonedir", "iterate_dir", "proc_root_readdir", "proc_pid_readdir", "proc_readdir",
	"vfs_read", "vfs_write", "vfs_open", "do_sys_openat2", "seq_read", "seq_read_iter",
	"find_task_by_vpid", "find_vpid", "commit_creds", "prepare_creds",
	"load_module", "do_init_module", "sock_recvmsg", "inet_ioctl", "tcp_v4_rcv", "ip_rcv", "nf_hook_slow",
}

// Bounds of the watched code kept from the image.
const (
	maxWatchedFunc  = 4 << 10 // bytes of one named watched function
	handlerPrefix   = 64      // bytes of each syscall handler's start
	maxWatchedTotal = 1 << 20
)

// watchedCode returns the image's code of the watched functions (whole, up
// to maxWatchedFunc) and the start of every syscall handler the image's
// table names (handlerPrefix bytes: where an inline hook's jmp goes).
func watchedCode(im *elfImage, prof *Profile, facts *ImageFacts) []ImageCode {
	var out []ImageCode
	have := map[uint64]bool{}
	for _, c := range facts.Code {
		have[c.Addr] = true
	}
	total := 0
	add := func(name string, addr, limit uint64) {
		if have[addr] || total > maxWatchedTotal {
			return
		}
		end := prof.Symbols.next(addr, nil)
		if end <= addr {
			return
		}
		code := im.read(addr, min(end-addr, limit))
		if code == nil {
			return
		}
		have[addr] = true
		total += len(code)
		out = append(out, ImageCode{Name: name, Addr: addr, Bytes: bytes.Clone(code), Size: end - addr, Watched: true})
	}
	for _, name := range watchedFuncs {
		if addr, ok := prof.Symbols.Lookup(name); ok {
			add(name, addr, maxWatchedFunc)
		}
	}
	for _, h := range facts.SyscallTable {
		if s, off, ok := prof.Symbols.Symbol(h); ok && off == 0 {
			add(prof.Symbols.preferredAlias(s), h, handlerPrefix)
		}
	}
	return out
}

// CheckInline compares the live code of the watched functions with the
// image's, the way CheckDispatch compares the dispatch path, and reports
// branches that go where the image's do not: an inline hook. A call at a
// function's __fentry__ site to ftrace's own entry or to a registered
// ftrace_ops's trampoline (trampolines, from FtraceOps) is ftrace at work,
// which the ftrace check judges by its registrations; any other branch
// there is reported.
//
// memo (may be nil) skips functions whose live code is what an earlier
// clean comparison saw, with the same trampolines.
func (k *Kernel) CheckInline(trampolines map[uint64]bool, memo *CodeMemo) ([]DispatchFinding, error) {
	facts := k.Profile.Image()
	if facts == nil {
		return nil, ErrNoImage
	}
	ftraceEntry := map[uint64]bool{}
	for _, name := range []string{"ftrace_caller", "ftrace_regs_caller", "ftrace_stub"} {
		if a, err := k.Addr(name); err == nil {
			ftraceEntry[a] = true
		}
	}
	var context []byte
	for _, t := range sortedKeys(trampolines) {
		context = binary.LittleEndian.AppendUint64(context, t)
	}
	var out []DispatchFinding
	var mods *ModuleMap
	for i, fn := range facts.Code {
		if !fn.Watched {
			continue
		}
		live := make([]byte, len(fn.Bytes))
		if _, err := k.AS.ReadVirtual(fn.Addr+k.Slide, live); err != nil {
			out = append(out, DispatchFinding{Function: fn.Name, Addr: fn.Addr + k.Slide, Reason: fmt.Sprintf("live code unreadable: %v", err)})
			continue
		}
		for _, f := range k.compareMemo(memo, facts, i, live, context) {
			if f.FentrySite && (ftraceEntry[f.Target] || trampolines[f.Target]) {
				continue
			}
			if f.Target != 0 {
				f.TargetOwner = k.owner(&mods, f.Target)
				if f.TargetOwner != "" {
					f.Reason += "; the target is " + f.TargetOwner
				}
			}
			out = append(out, f)
		}
	}
	return out, nil
}

// CodeMemo remembers, per function, a hash of the last live code a
// comparison with the image found clean, so that a scan that finds the
// same bytes again does not decode them again (decoding is most of the
// code checks' time). Bytes that differ from the remembered ones are
// compared in full. The zero value is ready; safe for concurrent use.
type CodeMemo struct {
	mu    sync.Mutex
	clean map[uint64][32]byte
}

// unchanged reports whether live (with context, what else the verdict
// depends on) is what fn's last clean comparison saw.
func (m *CodeMemo) unchanged(fn uint64, live, context []byte) bool {
	if m == nil {
		return false
	}
	sum := codeSum(live, context)
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.clean != nil && m.clean[fn] == sum
}

// remember records live as fn's clean code (a comparison found nothing).
func (m *CodeMemo) remember(fn uint64, live, context []byte) {
	if m == nil {
		return
	}
	sum := codeSum(live, context)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.clean == nil {
		m.clean = map[uint64][32]byte{}
	}
	m.clean[fn] = sum
}

func codeSum(live, context []byte) [32]byte {
	h := sha256.New()
	h.Write(context)
	h.Write([]byte{0})
	h.Write(live)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// compareMemo is compareCode skipping code memo saw clean, and
// remembering code found clean.
func (k *Kernel) compareMemo(memo *CodeMemo, facts *ImageFacts, i int, live, context []byte) []DispatchFinding {
	fn := facts.Code[i]
	if memo.unchanged(fn.Addr, live, context) {
		return nil
	}
	found := k.compareCode(fn, live, decodeImage(facts, i))
	if len(found) == 0 {
		memo.remember(fn.Addr, live, context)
	}
	return found
}

// sortedKeys returns m's keys in order.
func sortedKeys(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// TargetName names where the branch goes: its module ("module+0xoff"),
// else its symbol, else its address.
func (f DispatchFinding) TargetName() string {
	switch {
	case f.TargetOwner != "":
		return f.TargetOwner
	case f.TargetSymbol != "":
		return f.TargetSymbol
	}
	return fmt.Sprintf("%#x", f.Target)
}
