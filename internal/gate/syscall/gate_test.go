package gate

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestExpandAndHandler(t *testing.T) {
	var got []string
	for _, s := range Expand("open") {
		got = append(got, Handler(s.Name)+"->"+s.Op)
	}
	want := []string{"__x64_sys_open->open", "__x64_sys_openat->open", "__x64_sys_creat->open", "__x64_sys_openat2->open"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Expand(open) (-want +got):\n%s", diff)
	}
	if s := Expand("unlinkat")[0]; s.Path != 1 || s.Dirfd != 0 || s.Op != "unlinkat" {
		t.Errorf("Expand(unlinkat) = %+v", s)
	}
	if s := Expand("init_module")[0]; s.Path != -1 || s.Args != nil {
		t.Errorf("Expand(init_module) = %+v", s)
	}
}

func TestPtRegsDecode(t *testing.T) {
	// Linux x86-64 struct pt_regs: r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ...
	offs := map[string]uint64{"bp": 32, "bx": 40, "cx": 88, "r10": 56, "r9": 64, "r8": 72, "dx": 96, "si": 104, "di": 112, "orig_ax": 120}
	l, err := NewPtRegsLayout(func(f string) (uint64, error) {
		o, ok := offs[f]
		if !ok {
			return 0, errors.New("no field")
		}
		return o, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 168)
	put := func(off, v uint64) { binary.LittleEndian.PutUint64(b[off:], v) }
	put(112, 0xffffff9c) // AT_FDCWD as an int in di
	put(104, 0x7ffc1000)
	put(96, 0o100)
	put(56, 0o644)
	put(72, 5)
	put(64, 6)
	put(120, 257)
	put(40, 0xffffffff00000003) // i386: only the low 32 bits count
	put(88, 0x8000)
	put(32, 9)
	p, err := l.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	want := PtRegs{Args: [6]uint64{0xffffff9c, 0x7ffc1000, 0o100, 0o644, 5, 6}, CompatArgs: [6]uint64{3, 0x8000, 0o100, 0x7ffc1000, 0xffffff9c, 9}, OrigAX: 257}
	if diff := cmp.Diff(want, p); diff != "" {
		t.Errorf("Decode (-want +got):\n%s", diff)
	}
	if _, err := l.Decode(b[:100]); err == nil {
		t.Error("Decode of a short buffer succeeded")
	}
	if _, err := NewPtRegsLayout(func(string) (uint64, error) { return 1 << 20, nil }); err == nil {
		t.Error("implausible offsets accepted")
	}
}

func TestDenyEmulation(t *testing.T) {
	regs := Regs{RegRAX: 7, RegRIP: 0xffffffff81234560, RegRSP: 0xffffc90000123f40, RegRDI: 0xffffc90000123f58}
	got := Apply(regs, DenyWrites(regs, 0xffffffff81e00123, 13))
	want := Regs{RegRAX: uint64(0xfffffffffffffff3), RegRIP: 0xffffffff81e00123, RegRSP: 0xffffc90000123f48, RegRDI: 0xffffc90000123f58}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("deny (-want +got):\n%s", diff)
	}
	if int64(got[RegRAX]) != -13 {
		t.Errorf("rax = %d, want -13 (EACCES)", int64(got[RegRAX]))
	}
	k := Apply(regs, KillWrites(0xffffffff810a0000))
	if k[RegRIP] != 0xffffffff810a0000 || k[RegRDI] != 9 || k[RegRSP] != regs[RegRSP] {
		t.Errorf("kill = %v", k)
	}
}

func TestAbsolute(t *testing.T) {
	tests := []struct {
		p, cwd   string
		dirfd    int64
		hasDirfd bool
		want     string
	}{
		{"/etc/passwd", "/root", 0, false, "/etc/passwd"},
		{"passwd", "/etc", atFDCWD, true, "/etc/passwd"},
		{"../etc/./shadow", "/tmp", atFDCWD, true, "/etc/shadow"},
		{"x", "/tmp", 3, true, "x"},
		{"x", "", atFDCWD, true, "x"},
		{"//etc//passwd", "/", 0, false, "/etc/passwd"},
		{"", "/", 0, false, ""},
	}
	for _, tt := range tests {
		if got := Absolute(tt.p, tt.cwd, tt.dirfd, tt.hasDirfd); got != tt.want {
			t.Errorf("Absolute(%q, %q, %d) = %q, want %q", tt.p, tt.cwd, tt.dirfd, got, tt.want)
		}
	}
}

// fakeMem is user memory: one mapped range.
type fakeMem struct {
	base uint64
	b    []byte
}

func (f fakeMem) ReadVirtual(va uint64, p []byte) (int, error) {
	if va < f.base || va+uint64(len(p)) > f.base+uint64(len(f.b)) || va+uint64(len(p)) < va {
		return 0, errors.New("unmapped")
	}
	return copy(p, f.b[va-f.base:]), nil
}

func TestReadUserPath(t *testing.T) {
	m := fakeMem{base: 0x10000, b: make([]byte, 3*pageSize)}
	copy(m.b, "/etc/passwd\x00")
	// A path that ends at the last byte before an unmapped page.
	end := len(m.b) - 6
	copy(m.b[end:], "/tmp/\x00")
	if p, err := ReadUserPath(m, 0x10000); err != nil || p != "/etc/passwd" {
		t.Errorf("ReadUserPath = %q, %v", p, err)
	}
	if p, err := ReadUserPath(m, m.base+uint64(end)); err != nil || p != "/tmp/" {
		t.Errorf("ReadUserPath at page end = %q, %v", p, err)
	}
	for _, va := range []uint64{0, 0xffffffff81000000, 0x5000, m.base + uint64(len(m.b))} {
		if _, err := ReadUserPath(m, va); err == nil {
			t.Errorf("ReadUserPath(%#x) succeeded", va)
		}
	}
	long := fakeMem{base: 0x10000, b: []byte(strings.Repeat("a", 3*MaxPath))}
	if _, err := ReadUserPath(long, 0x10000); !errors.Is(err, ErrPathTooLong) {
		t.Errorf("no NUL: %v, want ErrPathTooLong", err)
	}
}

func FuzzReadUserPath(f *testing.F) {
	f.Add([]byte("/etc/passwd\x00"), uint64(0))
	f.Add([]byte("no nul"), uint64(3))
	f.Add([]byte{}, uint64(1<<47-1))
	f.Fuzz(func(t *testing.T, mem []byte, off uint64) {
		m := fakeMem{base: 0x400000, b: mem}
		p, err := ReadUserPath(m, m.base+off)
		if err == nil {
			if len(p) > MaxPath || strings.IndexByte(p, 0) >= 0 {
				t.Fatalf("bad path %q", p)
			}
		}
	})
}
