package linux

import (
	"fmt"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Kernel hook registries a rootkit uses instead of patching tables or code:
// ftrace (a callback on any function's __fentry__ site, with the power to
// change where it returns: how modern rootkits hook syscalls) and kprobes
// (a breakpoint handler on any instruction). Both keep their registrations
// in lists the kernel itself walks, so a registered hook cannot leave them;
// the IDS reads them and names each callback's owner.

// Bounds of the registry walks.
const (
	maxFtraceOps     = 512
	maxFtraceTargets = 64 // target functions named per ops
	maxFtraceEntries = 1 << 16
	maxHashBits      = 16
	kprobeTableSize  = 64 // 1 << KPROBE_HASH_BITS
	maxKprobes       = 4096
)

// FtraceOps is one registered ftrace_ops.
type FtraceOps struct {
	// Addr is the struct ftrace_ops's address, Func its callback.
	Addr       uint64 `json:"addr"`
	Func       uint64 `json:"func"`
	FuncSymbol string `json:"func_symbol,omitempty"`
	// Trampoline is the ops's own trampoline (0 if none).
	Trampoline uint64 `json:"trampoline,omitempty"`
	Flags      uint64 `json:"flags"`
	// Targets names the functions its filter hash attaches it to (at
	// most maxFtraceTargets); AllFunctions is set when the filter is
	// empty: the callback runs on every traced function.
	Targets      []string `json:"targets,omitempty"`
	TargetCount  int      `json:"target_count"`
	AllFunctions bool     `json:"all_functions"`
}

// FtraceOps walks ftrace_ops_list (ending at ftrace_list_end) and reads
// each ops's callback, trampoline and filter hash. A kernel without
// CONFIG_FUNCTION_TRACER has no list: it returns nil, nil.
func (k *Kernel) FtraceOps() ([]FtraceOps, error) {
	listVar, err1 := k.Addr("ftrace_ops_list")
	end, err2 := k.Addr("ftrace_list_end")
	if err1 != nil || err2 != nil {
		if err := k.Profile.noDataSymbols("ftrace_ops_list"); err != nil {
			return nil, err
		}
		return nil, nil
	}
	f := &fields{p: k.Profile}
	offFunc, offNext, offFlags := f.off("ftrace_ops.func"), f.off("ftrace_ops.next"), f.off("ftrace_ops.flags")
	offHash, offTramp := f.off("ftrace_ops.func_hash"), f.off("ftrace_ops.trampoline")
	offFilter := f.off("ftrace_ops_hash.filter_hash")
	if f.err != nil {
		return nil, f.err
	}
	op, err := vmi.ReadU64(k.AS, listVar)
	if err != nil {
		return nil, fmt.Errorf("linux: ftrace_ops_list: %w", err)
	}
	seen := map[uint64]bool{}
	var out []FtraceOps
	for op != end && op != 0 {
		if len(out) >= maxFtraceOps {
			return out, fmt.Errorf("%w: more than %d ftrace_ops", vmi.ErrListTooLong, maxFtraceOps)
		}
		if seen[op] {
			return out, fmt.Errorf("%w: ftrace_ops %#x revisited", vmi.ErrListCycle, op)
		}
		seen[op] = true
		o := FtraceOps{Addr: op}
		var next, hash uint64
		for _, r := range []struct {
			off uint64
			v   *uint64
		}{{offFunc, &o.Func}, {offNext, &next}, {offFlags, &o.Flags}, {offHash, &hash}, {offTramp, &o.Trampoline}} {
			if *r.v, err = vmi.ReadU64(k.AS, op+r.off); err != nil {
				return out, fmt.Errorf("linux: ftrace_ops at %#x: %w", op, err)
			}
		}
		o.FuncSymbol = k.symbolName(o.Func)
		if hash != 0 {
			if filter, err := vmi.ReadU64(k.AS, hash+offFilter); err == nil {
				k.ftraceTargets(f, filter, &o)
			}
		}
		out = append(out, o)
		op = next
	}
	return out, nil
}

// ftraceTargets reads a filter ftrace_hash into o: its entries' ips,
// named. An empty (or absent) hash means every function.
func (k *Kernel) ftraceTargets(f *fields, hash uint64, o *FtraceOps) {
	offBits, offBuckets, offCount := f.off("ftrace_hash.size_bits"), f.off("ftrace_hash.buckets"), f.off("ftrace_hash.count")
	offNode, offIP := f.off("ftrace_func_entry.hlist"), f.off("ftrace_func_entry.ip")
	if f.err != nil || hash == 0 {
		o.AllFunctions = hash == 0
		return
	}
	bits, err1 := vmi.ReadU64(k.AS, hash+offBits)
	buckets, err2 := vmi.ReadU64(k.AS, hash+offBuckets)
	count, err3 := vmi.ReadU64(k.AS, hash+offCount)
	if err1 != nil || err2 != nil || err3 != nil || bits > maxHashBits {
		return
	}
	if count == 0 {
		o.AllFunctions = true
		return
	}
	entries := 0
	for b := uint64(0); b < 1<<bits && entries < maxFtraceEntries; b++ {
		node, err := vmi.ReadU64(k.AS, buckets+8*b)
		for ; err == nil && node != 0 && entries < maxFtraceEntries; entries++ {
			ip, ierr := vmi.ReadU64(k.AS, node-offNode+offIP)
			if ierr != nil {
				break
			}
			o.TargetCount++
			if len(o.Targets) < maxFtraceTargets {
				name := k.symbolName(ip)
				if name == "" {
					name = fmt.Sprintf("%#x", ip)
				}
				o.Targets = append(o.Targets, name)
			}
			node, err = vmi.ReadU64(k.AS, node)
		}
	}
}

// Kprobe is one registered kprobe (or kretprobe).
type Kprobe struct {
	// Addr is the struct kprobe's address, At the probed instruction.
	Addr     uint64 `json:"addr"`
	At       uint64 `json:"at"`
	AtSymbol string `json:"at_symbol,omitempty"`
	// Handlers are the callbacks it runs: pre and post handlers, and for
	// a kretprobe its entry and return handlers.
	Handlers []uint64 `json:"handlers"`
	Return   bool     `json:"return"`
}

// Kprobes walks kprobe_table's hash chains and the children of aggregated
// probes. A kernel without CONFIG_KPROBES has no table: nil, nil.
func (k *Kernel) Kprobes() ([]Kprobe, error) {
	table, err := k.Addr("kprobe_table")
	if err != nil {
		if err := k.Profile.noDataSymbols("kprobe_table"); err != nil {
			return nil, err
		}
		return nil, nil
	}
	f := &fields{p: k.Profile}
	l := kprobeLayout{hlist: f.off("kprobe.hlist"), list: f.off("kprobe.list"), addr: f.off("kprobe.addr"),
		pre: f.off("kprobe.pre_handler"), post: f.off("kprobe.post_handler"),
		retHandler: f.off("kretprobe.handler"), retEntry: f.off("kretprobe.entry_handler")}
	if f.err != nil {
		return nil, f.err
	}
	l.aggr, _ = k.Addr("aggr_pre_handler")
	l.kret, _ = k.Addr("pre_handler_kretprobe")
	var out []Kprobe
	seen := map[uint64]bool{}
	for b := uint64(0); b < kprobeTableSize; b++ {
		node, err := vmi.ReadU64(k.AS, table+8*b)
		for ; err == nil && node != 0; node, err = vmi.ReadU64(k.AS, node) {
			p := node - l.hlist
			if seen[p] || len(seen) >= maxKprobes {
				break
			}
			seen[p] = true
			if err := k.readKprobe(l, p, seen, &out); err != nil {
				return out, err
			}
		}
		if err != nil {
			return out, fmt.Errorf("linux: kprobe_table[%d]: %w", b, err)
		}
	}
	return out, nil
}

// kprobeLayout holds the offsets and handler addresses Kprobes uses.
type kprobeLayout struct {
	hlist, list, addr, pre, post, retHandler, retEntry uint64
	aggr, kret                                         uint64
}

// readKprobe reads the kprobe at p into out; an aggregated probe's
// children (on its list) instead of itself.
func (k *Kernel) readKprobe(l kprobeLayout, p uint64, seen map[uint64]bool, out *[]Kprobe) error {
	at, err := vmi.ReadU64(k.AS, p+l.addr)
	if err != nil {
		return fmt.Errorf("linux: kprobe at %#x: %w", p, err)
	}
	pre, err1 := vmi.ReadU64(k.AS, p+l.pre)
	post, err2 := vmi.ReadU64(k.AS, p+l.post)
	if err1 != nil || err2 != nil {
		return fmt.Errorf("linux: kprobe at %#x: handlers unreadable", p)
	}
	if pre == l.aggr && l.aggr != 0 {
		// The children are on the aggregate's list, linked by their own list.
		head := p + l.list
		return vmi.WalkList(k.AS, head, maxKprobes, func(node uint64) error {
			c := node - l.list
			if seen[c] {
				return nil
			}
			seen[c] = true
			return k.readKprobe(l, c, seen, out)
		})
	}
	kp := Kprobe{Addr: p, At: at, AtSymbol: k.symbolName(at)}
	for _, h := range []uint64{pre, post} {
		if h != 0 && h != l.kret {
			kp.Handlers = append(kp.Handlers, h)
		}
	}
	if pre == l.kret && l.kret != 0 {
		kp.Return = true // struct kretprobe starts with its kprobe
		for _, off := range []uint64{l.retHandler, l.retEntry} {
			if h, err := vmi.ReadU64(k.AS, p+off); err == nil && h != 0 {
				kp.Handlers = append(kp.Handlers, h)
			}
		}
	}
	*out = append(*out, kp)
	return nil
}

// InCoreText reports whether run-time address va is in the kernel's core
// text (_stext.._etext): where the kernel's own callbacks live.
func (k *Kernel) InCoreText(va uint64) bool { return k.inCoreText(va) }

// SymbolName names run-time address va as "sym" or "sym+0xoff", "" when
// it is outside the kernel image's symbols.
func (k *Kernel) SymbolName(va uint64) string { return k.symbolName(va) }

// Region names the part of the address space run-time address va is in
// ("module space", "vmalloc space", "the direct map", ...), for findings.
func (k *Kernel) Region(va uint64) string { return k.region(va) }
