package kit

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestArchARMHF(t *testing.T) {
	a, err := lookupArch(ArchARMHF)
	if err != nil || a.meta != "linux-image-armmp" || a.console != "ttyAMA0" || !strings.Contains(a.append, "console=ttyAMA0") {
		t.Fatalf("lookupArch(armhf) = %+v, %v", a, err)
	}
	dir := t.TempDir()
	img := make([]byte, 0x400)
	le := binary.LittleEndian
	le.PutUint32(img[0x24:], 0x016F2818)
	le.PutUint32(img[0x2c:], uint32(len(img)))
	le.PutUint32(img[0x30:], 0x04030201)
	good := filepath.Join(dir, "zImage")
	if err := os.WriteFile(good, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkZImage(good); err != nil {
		t.Errorf("checkZImage(a zImage header) = %v", err)
	}
	le.PutUint32(img[0x30:], 0x01020304) // big-endian kernel
	bad := filepath.Join(dir, "zImage.be")
	if err := os.WriteFile(bad, img, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := checkZImage(bad); err == nil {
		t.Error("checkZImage accepted a big-endian zImage")
	}
	k := &Kit{Dir: dir}
	if k.SymbolsPath() != "" {
		t.Error("a kit without a symbol table has a SymbolsPath")
	}
	k.Manifest.Symbols = &FileSum{Name: SymbolsFile}
	if k.SymbolsPath() != filepath.Join(dir, SymbolsFile) {
		t.Errorf("SymbolsPath = %q", k.SymbolsPath())
	}
}
