package ids

import (
	"fmt"
	"strings"

	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// Checks of the kernel's own hook registries.
const (
	CheckFtrace = "ftrace-hook"
	CheckKprobe = "kprobe"
)

// codeOwner names where a callback lives for a finding: its module
// ("name+0xoff", hidden ones flagged), else its symbol, else its region.
// mm is read on first use.
func (i *Inspector) codeOwner(mm **linux.ModuleMap, va uint64) string {
	if s := i.K.SymbolName(va); s != "" {
		return s
	}
	if *mm == nil {
		*mm = i.K.ModuleMap()
	}
	if s := (*mm).Name(va); s != "" {
		return s
	}
	return fmt.Sprintf("%#x in %s, outside every known symbol and module", va, i.K.Region(va))
}

// checkFtrace reports ftrace_ops whose callback is not the kernel's own
// code: a module (or injected code) attached to functions' __fentry__
// sites, which is how a 6.x rootkit hooks syscalls with no table or code
// patch. It names the callback's module and the functions it is attached to.
func (i *Inspector) checkFtrace() ([]Finding, error) {
	ops, err := i.K.FtraceOps()
	if err != nil {
		return nil, err
	}
	var mm *linux.ModuleMap
	var out []Finding
	for _, o := range ops {
		if i.K.InCoreText(o.Func) {
			continue
		}
		where := "every traced function"
		if !o.AllFunctions {
			where = strings.Join(o.Targets, ", ")
			if o.TargetCount > len(o.Targets) {
				where += fmt.Sprintf(" and %d more", o.TargetCount-len(o.Targets))
			}
		}
		owner := i.codeOwner(&mm, o.Func)
		out = append(out, Finding{Check: CheckFtrace, Severity: SeverityCritical, Addr: o.Addr, Name: owner,
			Summary: fmt.Sprintf("ftrace_ops at %#x runs %s on %s", o.Addr, owner, where)})
	}
	return out, nil
}

// checkKprobes reports kprobes whose handlers are not the kernel's own
// code (the kernel's tracers register handlers in its core text).
func (i *Inspector) checkKprobes() ([]Finding, error) {
	kps, err := i.K.Kprobes()
	if err != nil {
		return nil, err
	}
	var mm *linux.ModuleMap
	var out []Finding
	for _, kp := range kps {
		var foreign []string
		for _, h := range kp.Handlers {
			if !i.K.InCoreText(h) {
				foreign = append(foreign, i.codeOwner(&mm, h))
			}
		}
		if len(foreign) == 0 {
			continue
		}
		kind, at := "kprobe", kp.AtSymbol
		if kp.Return {
			kind = "kretprobe"
		}
		if at == "" {
			at = fmt.Sprintf("%#x", kp.At)
		}
		out = append(out, Finding{Check: CheckKprobe, Severity: SeverityCritical, Addr: kp.Addr, Name: foreign[0],
			Summary: fmt.Sprintf("%s on %s runs %s", kind, at, strings.Join(foreign, ", "))})
	}
	return out, nil
}

// HooksReport is the `ids hooks` answer: every registered ftrace_ops and
// kprobe, with where their callbacks live, and every LSM hook entry.
type HooksReport struct {
	Ftrace  []HookEntry `json:"ftrace"`
	Kprobes []HookEntry `json:"kprobes"`
	// LSM are the entries of the LSM hook lists; LSMBroken the lists
	// that could not be walked; LSMNote why there are no lists to walk
	// (a 6.9+ kernel calls its LSM hooks through static calls).
	LSM       []LSMEntry            `json:"lsm"`
	LSMBroken []linux.LSMBrokenList `json:"lsm_broken,omitempty"`
	LSMNote   string                `json:"lsm_note,omitempty"`
}

// HookEntry is one registration: what it is attached to and the code it
// runs, each callback named ("kernel" for the kernel's own core text).
type HookEntry struct {
	Addr     uint64   `json:"addr"`
	On       string   `json:"on"`
	Runs     []string `json:"runs"`
	Foreign  bool     `json:"foreign"`
	Kind     string   `json:"kind"`
	Handlers []uint64 `json:"handlers"`
}

// Hooks lists the kernel's ftrace and kprobe registrations and its LSM
// hook entries.
func (i *Inspector) Hooks() (HooksReport, error) {
	r := HooksReport{Ftrace: []HookEntry{}, Kprobes: []HookEntry{}, LSM: []LSMEntry{}}
	ops, err := i.K.FtraceOps()
	if err != nil {
		return r, err
	}
	var mm *linux.ModuleMap
	for _, o := range ops {
		on := "every traced function"
		if !o.AllFunctions {
			on = strings.Join(o.Targets, ", ")
			if o.TargetCount > len(o.Targets) {
				on += fmt.Sprintf(" and %d more", o.TargetCount-len(o.Targets))
			}
		}
		r.Ftrace = append(r.Ftrace, i.hookEntry(&mm, o.Addr, "ftrace_ops", on, []uint64{o.Func}))
	}
	kps, err := i.K.Kprobes()
	if err != nil {
		return r, err
	}
	for _, kp := range kps {
		kind, on := "kprobe", kp.AtSymbol
		if kp.Return {
			kind = "kretprobe"
		}
		if on == "" {
			on = fmt.Sprintf("%#x", kp.At)
		}
		r.Kprobes = append(r.Kprobes, i.hookEntry(&mm, kp.Addr, kind, on, kp.Handlers))
	}
	return r, i.lsmListing(&r)
}

func (i *Inspector) hookEntry(mm **linux.ModuleMap, addr uint64, kind, on string, handlers []uint64) HookEntry {
	e := HookEntry{Addr: addr, Kind: kind, On: on, Handlers: handlers, Runs: []string{}}
	for _, h := range handlers {
		e.Runs = append(e.Runs, i.codeOwner(mm, h))
		e.Foreign = e.Foreign || !i.K.InCoreText(h)
	}
	return e
}

// CheckInline is the check of inline patches in functions rootkits hook.
const CheckInline = "inline-patch"

// checkInline reports branches in the watched kernel functions (the
// /proc/net seq_show functions, directory fillers, syscall handlers' first
// bytes...) that the image does not have: an inline hook. Calls at a
// __fentry__ site to a registered ftrace_ops's trampoline are ftrace's,
// judged by the ftrace check.
func (i *Inspector) checkInline() ([]Finding, error) {
	ops, err := i.K.FtraceOps()
	if err != nil {
		return nil, err
	}
	tramps := map[uint64]bool{}
	for _, o := range ops {
		if o.Trampoline != 0 {
			tramps[o.Trampoline] = true
		}
	}
	found, err := i.K.CheckInline(tramps, &i.code)
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, d := range found {
		out = append(out, Finding{Check: CheckInline, Severity: SeverityCritical, Name: d.Function, Addr: d.Addr,
			Summary: fmt.Sprintf("%s is patched at %#x: it branches to %s: %s", d.Function, d.Addr, d.TargetName(), d.Reason)})
	}
	return out, nil
}

// CheckIDT is the check of the interrupt descriptor table's handlers.
const CheckIDT = "idt"

// checkIDT reports IDT gates whose handler is outside the kernel image:
// every handler the kernel installs is in it (its entry code, and, for the
// reserved vectors, the early handlers in init text that the kernel leaves
// in place after boot), so one elsewhere (a module, the heap) is a hooked
// interrupt or exception.
func (i *Inspector) checkIDT() ([]Finding, error) {
	gates, err := i.K.IDT()
	if err != nil {
		return nil, err
	}
	var mm *linux.ModuleMap
	var out []Finding
	for _, g := range gates {
		if g.InCoreText || g.Symbol != "" {
			continue
		}
		owner := i.codeOwner(&mm, g.Handler)
		out = append(out, Finding{Check: CheckIDT, Severity: SeverityCritical, Addr: g.Handler, Name: fmt.Sprintf("vector %d", g.Vector),
			Summary: fmt.Sprintf("interrupt vector %d's handler is %s, outside the kernel image", g.Vector, owner)})
	}
	return out, nil
}

// CheckOpsTables is the check of /proc's and /proc/net's operation tables.
const CheckOpsTables = "ops-table"

// checkOpsTables reports operation tables (seq_operations and
// file_operations behind /proc and /proc/net) whose live words differ from
// the image's: a rootkit that hides sockets, modules or processes by
// redirecting a table entry instead of patching code.
func (i *Inspector) checkOpsTables() ([]Finding, error) {
	found, err := i.K.CheckOpsTables()
	if err != nil {
		return nil, err
	}
	var out []Finding
	for _, f := range found {
		out = append(out, Finding{Check: CheckOpsTables, Severity: SeverityCritical, Name: f.Table, Addr: f.Addr, Summary: f.Reason})
	}
	return out, nil
}
