package gdbrsp

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// qemuFiles returns the target description QEMU 7.2 sent for x86-64,
// committed under testdata/qemu-7.2.
func qemuFiles(t testing.TB) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	for _, name := range []string{"target.xml", "i386-64bit.xml"} {
		b, err := os.ReadFile(filepath.Join("testdata", "qemu-7.2", name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	return files
}

func fetchFrom(files map[string][]byte) func(string) ([]byte, error) {
	return func(annex string) ([]byte, error) {
		b, ok := files[annex]
		if !ok {
			return nil, &TargetError{Code: 0}
		}
		return b, nil
	}
}

func TestTargetDescriptionQEMU(t *testing.T) {
	td, err := parseTargetDescription(fetchFrom(qemuFiles(t)))
	if err != nil {
		t.Fatal(err)
	}
	if td.Architecture != "i386:x86-64" {
		t.Errorf("Architecture = %q", td.Architecture)
	}
	if len(td.Registers) != 66 {
		t.Errorf("%d registers, want 66", len(td.Registers))
	}
	want := []Register{
		{Name: "rax", Num: 0, BitSize: 64, Type: "int64", Offset: 0},
		{Name: "rip", Num: 16, BitSize: 64, Type: "code_ptr", Offset: 128},
		{Name: "eflags", Num: 17, BitSize: 32, Type: "x64_eflags", Offset: 136},
		{Name: "cs", Num: 18, BitSize: 32, Type: "int32", Offset: 140},
		{Name: "fs_base", Num: 24, BitSize: 64, Type: "int64", Offset: 164},
		{Name: "gs_base", Num: 25, BitSize: 64, Type: "int64", Offset: 172},
		{Name: "k_gs_base", Num: 26, BitSize: 64, Type: "int64", Offset: 180},
		{Name: "cr0", Num: 27, BitSize: 64, Type: "x64_cr0", Offset: 188},
		{Name: "cr2", Num: 28, BitSize: 64, Type: "int64", Offset: 196},
		{Name: "cr3", Num: 29, BitSize: 64, Type: "x64_cr3", Offset: 204},
		{Name: "cr4", Num: 30, BitSize: 64, Type: "x64_cr4", Offset: 212},
		{Name: "cr8", Num: 31, BitSize: 64, Type: "int64", Offset: 220},
		{Name: "efer", Num: 32, BitSize: 64, Type: "x64_efer", Offset: 228},
		{Name: "st0", Num: 33, BitSize: 80, Type: "i387_ext", Offset: 236},
		{Name: "fctrl", Num: 41, BitSize: 32, Type: "int", Group: "float", Offset: 316},
		{Name: "xmm0", Num: 49, BitSize: 128, Type: "vec128", Offset: 348},
		{Name: "mxcsr", Num: 65, BitSize: 32, Type: "x64_mxcsr", Group: "vector", Offset: 604},
	}
	var got []Register
	for _, w := range want {
		r, ok := td.Register(w.Name)
		if !ok {
			t.Errorf("no register %s", w.Name)
			continue
		}
		got = append(got, r)
	}
	if diff := cmp.Diff(want, got, cmpopts.IgnoreFields(Register{}, "Feature")); diff != "" {
		t.Errorf("registers (-want +got):\n%s", diff)
	}
	if got[0].Feature != "org.gnu.gdb.i386.core" {
		t.Errorf("Feature = %q", got[0].Feature)
	}
}

func TestDecodeGReplyQEMU(t *testing.T) {
	td, err := parseTargetDescription(fetchFrom(qemuFiles(t)))
	if err != nil {
		t.Fatal(err)
	}
	g, err := os.ReadFile(filepath.Join("testdata", "qemu-7.2", "g.reply"))
	if err != nil {
		t.Fatal(err)
	}
	regs, err := decodeGReply(td, g)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{
		"rip": 0xfff0, "cs": 0xf000, "eflags": 0x2, "rdx": 0x60fb1, "cr0": 0x60000010,
		"cr3": 0, "gs_base": 0, "efer": 0, "mxcsr": 0x1f80, "fctrl": 0x37f,
	}
	got := map[string]uint64{}
	for k := range want {
		got[k] = regs[k]
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("registers at reset (-want +got):\n%s", diff)
	}
	if _, ok := regs["xmm0"]; ok {
		t.Error("128-bit register in the uint64 map")
	}
	// A truncated or partly unavailable reply drops what it cannot give.
	short := []byte(strings.Repeat("x", 16) + string(g[16:136*2]))
	regs, err = decodeGReply(td, short)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := regs["rax"]; ok {
		t.Error("unavailable rax decoded")
	}
	if _, ok := regs["eflags"]; ok {
		t.Error("eflags decoded past the end of the reply")
	}
	if regs["rip"] != 0xfff0 {
		t.Errorf("rip = %#x", regs["rip"])
	}
}

func TestTargetDescriptionErrors(t *testing.T) {
	reg := func(attrs string) string {
		return `<target><feature name="f"><reg ` + attrs + `/></feature></target>`
	}
	tests := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"include cycle", map[string]string{
			"target.xml": `<target><xi:include href="a.xml"/></target>`,
			"a.xml":      `<feature><xi:include href="target.xml"/></feature>`,
		}, "included twice"},
		{"missing include", map[string]string{"target.xml": `<target><xi:include href="a.xml"/></target>`}, "read a.xml"},
		{"hostile include name", map[string]string{"target.xml": `<target><xi:include href="a:b,0"/></target>`}, "bad include"},
		{"bad bitsize", map[string]string{"target.xml": reg(`name="a" bitsize="7"`)}, "bad bitsize"},
		{"huge bitsize", map[string]string{"target.xml": reg(`name="a" bitsize="100000"`)}, "bad bitsize"},
		{"no name", map[string]string{"target.xml": reg(`bitsize="8"`)}, "without a name"},
		{"bad regnum", map[string]string{"target.xml": reg(`name="a" bitsize="8" regnum="-1"`)}, "bad regnum"},
		{"duplicate number", map[string]string{"target.xml": `<target><reg name="a" bitsize="8" regnum="1"/><reg name="b" bitsize="8" regnum="1"/></target>`}, "used twice"},
		{"not xml", map[string]string{"target.xml": `<target><reg`}, "target description"},
		{"entity", map[string]string{"target.xml": `<target>&foo;</target>`}, "target description"},
	}
	// Deep include chain.
	deep := map[string]string{"target.xml": `<target><xi:include href="d0.xml"/></target>`}
	for i := range maxTdescDepth + 2 {
		deep[fmt.Sprintf("d%d.xml", i)] = fmt.Sprintf(`<feature><xi:include href="d%d.xml"/></feature>`, i+1)
	}
	tests = append(tests, struct {
		name  string
		files map[string]string
		want  string
	}{"deep includes", deep, "nested deeper"})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := map[string][]byte{}
			for k, v := range tt.files {
				files[k] = []byte(v)
			}
			_, err := parseTargetDescription(fetchFrom(files))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one mentioning %q", err, tt.want)
			}
			if !errors.Is(err, ErrProtocol) && !strings.Contains(tt.want, "read") {
				t.Errorf("error %v does not wrap ErrProtocol", err)
			}
		})
	}
}

func TestTargetDescriptionGap(t *testing.T) {
	files := map[string][]byte{"target.xml": []byte(
		`<target><reg name="a" bitsize="32"/><reg name="b" bitsize="64"/><reg name="c" bitsize="8" regnum="5"/><reg name="d" bitsize="8"/></target>`)}
	td, err := parseTargetDescription(fetchFrom(files))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range td.Registers {
		got = append(got, fmt.Sprintf("%s:%d@%d", r.Name, r.Num, r.Offset))
	}
	if diff := cmp.Diff([]string{"a:0@0", "b:1@4", "c:5@-1", "d:6@-1"}, got); diff != "" {
		t.Errorf("registers (-want +got):\n%s", diff)
	}
}

// FuzzTargetDescription parses a hostile target.xml that may include a
// second hostile document.
func FuzzTargetDescription(f *testing.F) {
	qf := qemuFiles(f)
	f.Add(qf["target.xml"], qf["i386-64bit.xml"])
	f.Add([]byte(`<target><reg name="a" bitsize="8" regnum="3"/><xi:include href="b.xml"/></target>`), []byte(`<feature name="x"><reg name="b" bitsize="16"/></feature>`))
	f.Fuzz(func(t *testing.T, target, inc []byte) {
		files := map[string][]byte{"target.xml": target, "b.xml": inc, "i386-64bit.xml": inc}
		td, err := parseTargetDescription(fetchFrom(files))
		if err != nil {
			return
		}
		if len(td.Registers) > maxTdescRegs {
			t.Fatalf("%d registers", len(td.Registers))
		}
		for i, r := range td.Registers {
			if r.BitSize <= 0 || r.BitSize%8 != 0 || r.BitSize > maxRegisterBits {
				t.Fatalf("register %+v has a bad size", r)
			}
			if i > 0 && td.Registers[i-1].Num >= r.Num {
				t.Fatalf("registers not strictly sorted at %d", i)
			}
		}
	})
}

// decodeGReply is decodeGReplyInto into a new map.
func decodeGReply(td *TargetDescription, r []byte) (map[string]uint64, error) {
	out := make(map[string]uint64, len(td.byName))
	if err := decodeGReplyInto(td, r, out); err != nil {
		return nil, err
	}
	return out, nil
}
