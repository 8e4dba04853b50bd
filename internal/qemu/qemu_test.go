package qemu

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseMtreeQ35Split(t *testing.T) {
	text, err := os.ReadFile("testdata/mtree-q35-4608M.txt")
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseMtree(string(text), RAMBackendID)
	if err != nil {
		t.Fatal(err)
	}
	want := []Region{
		{GPA: 0, Offset: 0, Size: 0x80000000},
		{GPA: 0x100000000, Offset: 0x80000000, Size: 0xa0000000},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("ParseMtree (-want +got):\n%s", diff)
	}
}

func TestParseMtreeErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, wantErr string }{
		{"empty", "", "no RAM region"},
		{"other backend", "address-space: memory\n  0000000000000000-000000000fffffff (prio 0, ram): alias ram-below-4g @other 0000000000000000-000000000fffffff\n", "no RAM region"},
		{"size mismatch", "address-space: memory\n  0000000000000000-000000000fffffff (prio 0, ram): alias ram-below-4g @gatevisor-ram 0000000000000000-0000000000000fff\n", "sizes differ"},
		{"overlap", "address-space: memory\n  0000000000000000-000000000fffffff (prio 0, ram): alias a @gatevisor-ram 0000000000000000-000000000fffffff\n  0000000000001000-0000000000001fff (prio 0, ram): alias b @gatevisor-ram 0000000000000000-0000000000000fff\n", "overlap"},
		{"bad hex", "address-space: memory\n  00000000000000zz-000000000fffffff (prio 0, ram): gatevisor-ram\n", "bad address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseMtree(tc.text, RAMBackendID)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("ParseMtree error = %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzParseMtree(f *testing.F) {
	text, _ := os.ReadFile("testdata/mtree-q35-4608M.txt")
	f.Add(string(text))
	f.Add("address-space: memory\n  0-f (prio 0, ram): gatevisor-ram\n")
	f.Fuzz(func(t *testing.T, s string) {
		regions, err := ParseMtree(s, RAMBackendID)
		if err != nil {
			return
		}
		for i, r := range regions {
			if r.Size == 0 || (i > 0 && r.GPA < regions[i-1].End()) {
				t.Fatalf("invalid layout accepted: %+v", regions)
			}
		}
	})
}

func TestGuestRAMSplitLayout(t *testing.T) {
	const size = 3 << 20
	f, err := CreateRAMFile(t.TempDir(), size)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Low 2 MiB at GPA 0, the last 1 MiB at GPA 16 MiB.
	regions := []Region{{GPA: 0, Offset: 0, Size: 2 << 20}, {GPA: 16 << 20, Offset: 2 << 20, Size: 1 << 20}}
	if _, err := f.WriteAt([]byte("above-hole"), 2<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("low-end"), 2<<20-7); err != nil {
		t.Fatal(err)
	}
	g, err := MapRAM(f, size, regions)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	buf := make([]byte, 10)
	if _, err := g.ReadAt(buf, 16<<20); err != nil || string(buf) != "above-hole" {
		t.Fatalf("ReadAt(16M) = %q, %v", buf, err)
	}
	buf = make([]byte, 12)
	n, err := g.ReadAt(buf, 2<<20-7)
	if n != 7 || err == nil || string(buf[:n]) != "low-end" {
		t.Fatalf("read across the hole = %d %q, %v; want 7 bytes and ErrNotRAM", n, buf[:n], err)
	}
	if _, err := g.WriteAt([]byte("xyz"), 16<<20+5); err != nil {
		t.Fatal(err)
	}
	back := make([]byte, 3)
	if _, err := f.ReadAt(back, 2<<20+5); err != nil || !bytes.Equal(back, []byte("xyz")) {
		t.Fatalf("write did not reach the file: %q %v", back, err)
	}
	if _, err := g.ReadAt(buf, -1); err == nil {
		t.Fatal("negative address accepted")
	}
	if _, err := MapRAM(f, size, []Region{{GPA: 0, Offset: 2 << 20, Size: 2 << 20}}); err == nil {
		t.Fatal("region beyond the file accepted")
	}
}

func TestRAMFileLeavesNoName(t *testing.T) {
	dir := t.TempDir()
	f, err := CreateRAMFile(dir, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ents, _ := os.ReadDir(dir)
	if len(ents) != 0 {
		t.Fatalf("RAM file left a name in %s: %v", dir, ents)
	}
}

func TestConfigValidate(t *testing.T) {
	base := Config{Binary: "qemu", Dir: "/r", Name: "vm", MemMiB: 256, CPUs: 1, Accel: "tcg", Kernel: "k"}
	for _, tc := range []struct {
		name    string
		mut     func(*Config)
		wantErr string
	}{
		{"ok", func(*Config) {}, ""},
		{"mem small", func(c *Config) { c.MemMiB = 16 }, "too small"},
		{"mem large", func(c *Config) { c.MemMiB = 2 << 20 }, "too large"},
		{"cpus", func(c *Config) { c.CPUs = 0 }, "out of range"},
		{"accel", func(c *Config) { c.Accel = "xen" }, "want kvm or tcg"},
		{"kernel", func(c *Config) { c.Kernel = "" }, "no kernel"},
		{"append at the limit", func(c *Config) { c.Append = strings.Repeat("a", MaxCmdline) }, ""},
		{"append too long", func(c *Config) { c.Append = strings.Repeat("a", MaxCmdline+1) }, "at most 2047"},
		{"append 70 KB", func(c *Config) { c.Append = "console=ttyS0 " + strings.Repeat("x=1 ", 70<<10/4) }, "shorten it"},
		{"append NUL", func(c *Config) { c.Append = "console=ttyS0\x00init=/bin/sh" }, "NUL byte at offset 13"},
		{"append newline", func(c *Config) { c.Append = "console=ttyS0\ninit=/bin/sh" }, "line break at offset 13"},
		{"append CR", func(c *Config) { c.Append = "quiet\r" }, "line break"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := base
			tc.mut(&c)
			err := c.Validate()
			if (err == nil) != (tc.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Validate() = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestArgsKeepChannelsPrivate(t *testing.T) {
	c := Config{Binary: "qemu", Dir: "/run/gv/vm", Name: "vm", MemMiB: 256, CPUs: 2, Accel: "tcg", Kernel: "k", Initrd: "i", Append: "console=ttyS0"}
	args := strings.Join(c.Args(), " ")
	for _, want := range []string{"-S", "-nodefaults", "-no-reboot", "share=on", "path=/run/gv/vm/gdb.sock", "-gdb chardev:gdb0", "unix:/run/gv/vm/qmp.sock", "-sandbox on"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %q: %s", want, args)
		}
	}
	for _, bad := range []string{"tcp:", "-netdev", "0.0.0.0"} {
		if strings.Contains(args, bad) {
			t.Errorf("args contain %q: %s", bad, args)
		}
	}
}
