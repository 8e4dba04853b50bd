package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/armimage"
	"github.com/gatevisor/gatevisor/internal/kit"
)

// AArch64 encodings for adrpTargets.
func insADRP(rd uint32, pc, target uint64) uint32 {
	imm := (int64(target&^0xfff) - int64(pc&^0xfff)) >> 12
	return 0x90000000 | uint32(imm&3)<<29 | uint32(imm>>2&0x7ffff)<<5 | rd
}
func insADD(rd, rn, imm uint32) uint32 { return 0x91000000 | imm<<10 | rn<<5 | rd }
func insLDR(rt, rn, off uint32) uint32 { return 0xf9400000 | off/8<<10 | rn<<5 | rt }
func insLDRPre(rt, rn uint32, imm int32) uint32 {
	return 0xf8400c00 | uint32(imm)&0x1ff<<12 | rn<<5 | rt
}

func code(ins ...uint32) []byte {
	b := make([]byte, 4*len(ins))
	for i, x := range ins {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

func TestAdrpTargets(t *testing.T) {
	pc := uint64(0xffff800008154200)
	anchor := uint64(0xffff800009d5c9c0)
	got := adrpTargets(code(
		insADRP(21, pc, anchor),              // adrp x21, anchor page
		insADD(21, 21, uint32(anchor&0xfff)), // add x21, x21, :lo12:anchor
		insLDRPre(0, 21, 0x50),               // ldr x0, [x21, #0x50]!   (modules)
		insADRP(1, pc+12, 0xffff800009cc3010),
		insLDR(2, 1, 0x10), // ldr x2, [x1, #0x10]
		insADD(3, 9, 8),    // add from a register no ADRP set: nothing
		insLDR(4, 2, 8),    // x2 was loaded, not addressed: nothing
		insADRP(5, pc+28, 0xffff7fff00000000),
	), pc)
	want := []uint64{anchor, anchor + 0x50, 0xffff800009cc3000 + 0x10}
	if fmt.Sprintf("%x", got) != fmt.Sprintf("%x", want) {
		t.Fatalf("adrpTargets = %x, want %x", got, want)
	}
	// Truncated and empty code is no panic.
	adrpTargets([]byte{1, 2, 3}, pc)
	adrpTargets(nil, pc)
}

// ksymImage builds an image holding a __ksymtab run of names (sorted) whose
// values are 0x1000+16*i, with the names in a strings area after it.
func ksymImage(names []string) []byte {
	sort.Strings(names)
	img := make([]byte, 0x100)
	tab := len(img)
	img = append(img, make([]byte, 12*len(names))...)
	strs := len(img)
	var sb bytes.Buffer
	off := map[string]int{}
	for _, n := range names {
		if o, ok := off["__"+n]; ok { // a tail-merged name
			off[n] = o + 2
			continue
		}
		off[n] = strs + sb.Len()
		sb.WriteString(n + "\x00")
	}
	empty := strs + sb.Len()
	sb.WriteByte(0)
	img = append(img, sb.Bytes()...)
	img = append(img, make([]byte, 0x2000)...)
	le := binary.LittleEndian
	for i, n := range names {
		e := tab + 12*i
		le.PutUint32(img[e:], uint32(int32(0x1000+16*i-e)))
		le.PutUint32(img[e+4:], uint32(int32(off[n]-(e+4))))
		le.PutUint32(img[e+8:], uint32(int32(empty-(e+8))))
	}
	return img
}

func TestExportedSymbols(t *testing.T) {
	var names []string
	for i := range 80 {
		names = append(names, fmt.Sprintf("sym_%03d", i))
	}
	names = append(names, "__inode_add_bytes", "inode_add_bytes", "init_task")
	img := ksymImage(names)
	got := exportedSymbols(img, uint64(len(img)))
	if len(got) != len(names) {
		t.Fatalf("%d exported symbols, want %d: %v", len(got), len(names), got)
	}
	sort.Strings(names)
	for i, e := range got {
		if e.name != names[i] || e.off != uint64(0x1000+16*i) {
			t.Errorf("entry %d = %+v, want %s at %#x", i, e, names[i], 0x1000+16*i)
		}
	}
	// A run shorter than minKsymRun is not a symbol table.
	if got := exportedSymbols(ksymImage(names[:10]), 1<<20); len(got) != 0 {
		t.Errorf("a 10-entry run gave %d symbols", len(got))
	}
}

func TestFindBanner(t *testing.T) {
	img := []byte("\x00Linux version %s (%s)\n\x00...\x00Linux version 6.1.0-57-arm64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP\n\x00")
	p, ok := findBanner(img)
	if !ok || !bytes.HasPrefix(img[p:], []byte("Linux version 6.1.0-57-arm64 (")) {
		t.Fatalf("findBanner = %d, %v", p, ok)
	}
	if _, ok := findBanner([]byte("no banner here")); ok {
		t.Error("found a banner in none")
	}
}

// arm64Kit returns the kernel image of a built arm64 kit, or skips.
func arm64Kit(t *testing.T) string {
	t.Helper()
	kits, _ := kit.List("")
	for _, k := range kits {
		if k.Arch == kit.ArchARM64 && k.Verified {
			if found, err := kit.Find("", k.Name); err == nil {
				return found.Kernel
			}
		}
	}
	t.Skip("no arm64 kit is built: run 'gatevisor kit build --arch arm64' (TestARM64 in tests/integration builds it)")
	return ""
}

// TestARM64KitProfile profiles the arm64 kit's kernel: every symbol the
// introspection needs is recovered, at an address kallsyms or the image
// confirms.
func TestARM64KitProfile(t *testing.T) {
	img, err := os.ReadFile(arm64Kit(t))
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewProfile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !p.IsARM64() || !strings.HasSuffix(p.Release, "-arm64") || p.BTF == nil {
		t.Fatalf("profile: arch %q release %q BTF %v", p.Arch, p.Release, p.BTF != nil)
	}
	text, _ := p.Symbols.Lookup("_text")
	for _, n := range []string{"linux_banner", "init_task", "init_mm", "init_cred", "init_pid_ns", "kimage_voffset", "__per_cpu_offset",
		"nr_cpu_ids", "sys_call_table", "modules", "module_kset", "socket_file_ops", "runqueues", "kprobe_table", "ftrace_ops_list", "ftrace_list_end"} {
		a, ok := p.Symbols.Lookup(n)
		if !ok || a < text {
			t.Errorf("%s: %#x, %v", n, a, ok)
		}
	}
	f, err := NewImageFacts(img, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(f.SyscallTable) < 400 {
		t.Errorf("sys_call_table: %d slots", len(f.SyscallTable))
	}
	if s, _, _ := p.Symbols.Symbol(f.SyscallTable[0]); s.Name != "__arm64_sys_io_setup" {
		t.Errorf("slot 0 is %s", s.Name)
	}
}

func FuzzARM64Image(f *testing.F) {
	hdr := make([]byte, 64)
	binary.LittleEndian.PutUint64(hdr[24:], 1<<1)
	binary.LittleEndian.PutUint32(hdr[56:], armimage.Magic)
	f.Add(append(bytes.Clone(hdr), ksymImage([]string{"a", "b", "c"})...))
	f.Add(append(bytes.Clone(hdr), []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00Linux version 6.1 (x)\n\x00")...))
	f.Add(bytes.Clone(hdr))
	f.Fuzz(func(t *testing.T, b []byte) {
		img := append(bytes.Clone(hdr), b...)
		_, err := NewProfile(img)
		if err == nil {
			return
		}
		if !errors.Is(err, ErrARM64Image) && !errors.Is(err, ErrNoKallsyms) && !errors.Is(err, ErrNotKernel) && !errors.Is(err, ErrNoSymbol) && !errors.Is(err, ErrNoBTF) && err.Error() == "" {
			t.Fatalf("unexpected error %v", err)
		}
		relocateARM64(img)
		exportedSymbols(img, uint64(len(img)))
		findBTF(img)
	})
}
