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
}
