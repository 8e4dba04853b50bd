package kit

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestArchSpecs(t *testing.T) {
	for _, tt := range []struct {
		arch, meta, console, root string
		feature                   string
	}{
		{"", "linux-image-amd64", "ttyS0", "apt", "CONFIG_ACPI_BUTTON"},
		{ArchAMD64, "linux-image-amd64", "ttyS0", "apt", "CONFIG_ACPI_BUTTON"},
		{ArchARM64, "linux-image-arm64", "ttyAMA0", "apt-arm64", "CONFIG_KEYBOARD_GPIO"},
	} {
		a, err := lookupArch(tt.arch)
		if err != nil {
			t.Fatalf("lookupArch(%q): %v", tt.arch, err)
		}
		if a.meta != tt.meta || a.console != tt.console || !strings.Contains(a.append, "console="+tt.console) {
			t.Errorf("lookupArch(%q) = %+v", tt.arch, a)
		}
		found := false
		for _, f := range a.features {
			found = found || f.Config == tt.feature
		}
		if !found {
			t.Errorf("%q kits do not require %s", tt.arch, tt.feature)
		}
		if got := privateRoot("/c", DefaultSuite, tt.arch); got != filepath.Join("/c", tt.root) {
			t.Errorf("privateRoot(bookworm, %q) = %s", tt.arch, got)
		}
		g := &guestTree{console: a.console}
		if !strings.Contains(g.inittab(), a.console+"::respawn:-/bin/sh") {
			t.Errorf("inittab for %q:\n%s", tt.arch, g.inittab())
		}
	}
	if got := privateRoot("/c", "trixie", ArchARM64); got != "/c/apt-trixie-arm64" {
		t.Errorf("privateRoot(trixie, arm64) = %s", got)
	}
	if err := ValidArch("mips"); err == nil || !strings.Contains(err.Error(), "arm64") {
		t.Errorf("ValidArch(mips) = %v", err)
	}
	k := &Kit{}
	if k.Arch() != ArchAMD64 {
		t.Errorf("a manifest without arch is %s", k.Arch())
	}
}
