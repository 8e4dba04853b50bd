package ids

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi/linux"
)

// TestKernelWithoutBTF profiles the default kit's kernel with its .BTF
// section renamed away, as a kernel built without CONFIG_DEBUG_INFO_BTF:
// without --symbols the error says what to give.
func TestKernelWithoutBTF(t *testing.T) {
	k := testvm.Kit(t)
	img, err := os.ReadFile(k.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	vmlinux, _, err := linux.ExtractVmlinux(img)
	if err != nil {
		t.Fatal(err)
	}
	// Make .BTF a SHT_NOBITS section: it then holds nothing.
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	shoff, shentsize := le.Uint64(vmlinux[0x28:]), uint64(le.Uint16(vmlinux[0x3a:]))
	stripped := bytes.Clone(vmlinux)
	found := false
	for i, sec := range f.Sections {
		if sec.Name == ".BTF" {
			le.PutUint32(stripped[shoff+uint64(i)*shentsize+4:], uint32(elf.SHT_NOBITS))
			found = true
		}
	}
	if !found {
		t.Fatal("the kit's vmlinux has no .BTF")
	}
	path := filepath.Join(t.TempDir(), "vmlinux")
	if err := os.WriteFile(path, stripped, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = LoadKernelProfileWith(path, linux.ProfileOptions{})
	if !errors.Is(err, ErrNeedSymbols) || !strings.Contains(err.Error(), "give --symbols FILE.json (Volatility 3 ISF, e.g. from dwarf2json)") {
		t.Fatalf("no BTF, no symbols: err %v", err)
	}
	if _, err := SymbolsOptions(filepath.Join(t.TempDir(), "none.json"), false); err == nil || !strings.HasPrefix(err.Error(), "--symbols: ") {
		t.Errorf("a missing symbols file: err %v", err)
	}

	// With a symbol table of the kernel (written from its BTF) the image
	// is profiled, its layouts from the table.
	withBTF, err := linux.NewProfile(img)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := withBTF.BTF.Raw()
	if err != nil {
		t.Fatal(err)
	}
	js, err := testvm.ISF(raw, nil, withBTF.Banner)
	if err != nil {
		t.Fatal(err)
	}
	isfPath := filepath.Join(t.TempDir(), "vmlinux.json")
	if err := os.WriteFile(isfPath, js, 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := SymbolsOptions(isfPath, false)
	if err != nil {
		t.Fatal(err)
	}
	p, err := LoadKernelProfileWith(path, opts)
	if err != nil {
		t.Fatal(err)
	}
	if p.BTF != nil || p.ISF == nil || p.Banner != withBTF.Banner {
		t.Fatalf("profile: BTF %v, ISF %v, banner %q", p.BTF != nil, p.ISF != nil, p.Banner)
	}
	for _, f := range []string{"task_struct.comm", "task_struct.se.vruntime", "sock.__sk_common.skc_family", "module.name"} {
		want, werr := withBTF.FieldOffset(f)
		got, gerr := p.FieldOffset(f)
		if werr != nil || gerr != nil || got != want {
			t.Errorf("%s: ISF %d %v, BTF %d %v", f, got, gerr, want, werr)
		}
	}
}
