package linux

import "testing"

func TestModuleMapName(t *testing.T) {
	mm := &ModuleMap{spans: []ModuleSpan{
		{Module: Module{Name: "evdev", Base: 0xffffffffc0000000, Size: 0x3000}, Views: []string{ViewModules, ViewSysfs, ViewScan}},
		{Module: Module{Name: "rk", Base: 0xffffffffc0010000, Size: 0x1000}, Views: []string{ViewScan}},
	}}
	for _, tc := range []struct {
		va   uint64
		want string
	}{
		{0xffffffffc0000010, "evdev+0x10"},
		{0xffffffffc0002fff, "evdev+0x2fff"},
		{0xffffffffc0003000, ""},
		{0xffffffffc0010123, "rk+0x123 (hidden: seen in scan, missing from the module list)"},
		{0xffffffffbfffffff, ""},
		{0xffffffffc0011000, ""},
	} {
		if got := mm.Name(tc.va); got != tc.want {
			t.Errorf("Name(%#x) = %q, want %q", tc.va, got, tc.want)
		}
	}
}

func TestRedirectedSyscalls(t *testing.T) {
	facts := &ImageFacts{SyscallTable: []uint64{0x1000, 0x2000, 0x1000}}
	img := []insn{
		{off: 0, len: 3, kind: notBranch},
		{off: 3, len: 5, kind: directBranch, target: 0x1000},
		{off: 8, len: 5, kind: directBranch, target: 0x2000},
		{off: 40, len: 5, kind: directBranch, target: 0x2000},
	}
	for _, tc := range []struct {
		off  int
		want []int
	}{{3, []int{0, 2}}, {0, []int{0, 2}}, {8, []int{1}}, {20, nil}, {30, []int{1}}} {
		got := redirectedSyscalls(facts, img, tc.off)
		if len(got) != len(tc.want) {
			t.Errorf("off %d: %v, want %v", tc.off, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("off %d: %v, want %v", tc.off, got, tc.want)
			}
		}
	}
}
