package linux

import (
	"errors"
	"reflect"
	"sort"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

func TestModulesSynthetic(t *testing.T) {
	s := buildScene(t)
	k := s.kernel()
	want := []Module{
		{Addr: s.modules["evdev"], Name: "evdev", Base: s.modules["evdev"] - 0x1040, Size: 0x3000, State: "live"},
		{Addr: s.modules["virtio_net"], Name: "virtio_net", Base: s.modules["virtio_net"] - 0x1040, Size: 0x3000, State: "live"},
		{Addr: s.modules["virtio_ring"], Name: "virtio_ring", Base: s.modules["virtio_ring"] - 0x1040, Size: 0x3000, State: "live"},
	}
	byAddr := func(ms []Module) []Module {
		ms = append([]Module(nil), ms...)
		sort.Slice(ms, func(i, j int) bool { return ms[i].Addr > ms[j].Addr })
		return ms
	}
	for name, list := range map[string]func() ([]Module, error){
		"Modules": k.Modules, "ModulesFromSysfs": k.ModulesFromSysfs, "ScanModules": k.ScanModules,
	} {
		got, err := list()
		if err != nil || !reflect.DeepEqual(byAddr(got), want) {
			t.Errorf("%s (-want +got):\n-%+v\n+%+v (%v)", name, want, byAddr(got), err)
		}
	}
	if h, err := CrossViewModules(k); err != nil || len(h) != 0 {
		t.Errorf("CrossViewModules on a clean scene = %+v, %v", h, err)
	}
}

func TestHiddenModule(t *testing.T) {
	s := buildScene(t)
	unlink := func(node uint64) {
		next, prev := s.get64(node), s.get64(node+8)
		s.put64(prev, next)
		s.put64(next+8, prev)
		s.put64(node, listPoison1)
		s.put64(node+8, listPoison2)
	}
	// virtio_net leaves the module list (list_del); evdev leaves the list
	// and sysfs (kobject unlinked too).
	unlink(s.modules["virtio_net"] + s.off("module.list"))
	unlink(s.modules["evdev"] + s.off("module.list"))
	unlink(s.modules["evdev"] + s.off("module.mkobj") + s.off("module_kobject.kobj") + s.off("kobject.entry"))
	h, err := CrossViewModules(s.kernel())
	if err != nil {
		t.Fatal(err)
	}
	want := []Hidden{
		{Kind: "module", Name: "virtio_net", Addr: s.modules["virtio_net"], SeenIn: []string{ViewSysfs, ViewScan}, MissingFrom: []string{ViewModules}},
		{Kind: "module", Name: "evdev", Addr: s.modules["evdev"], SeenIn: []string{ViewScan}, MissingFrom: []string{ViewModules, ViewSysfs}},
	}
	sort.Slice(h, func(i, j int) bool { return h[i].Addr < h[j].Addr })
	sort.Slice(want, func(i, j int) bool { return want[i].Addr < want[j].Addr })
	if !reflect.DeepEqual(h, want) {
		t.Errorf("CrossViewModules (-want +got):\n-%+v\n+%+v", want, h)
	}
}

func TestAdversarialModules(t *testing.T) {
	for _, c := range []struct {
		name    string
		corrupt func(s *scene)
		check   func(t *testing.T, k *Kernel)
	}{
		{"list cycle", func(s *scene) {
			n := s.modules["virtio_net"] + s.off("module.list")
			s.put64(n, n)
		}, func(t *testing.T, k *Kernel) {
			ms, err := k.Modules()
			if !errors.Is(err, vmi.ErrListCycle) || len(ms) != 2 {
				t.Errorf("Modules = %v, %v", ms, err)
			}
			if _, err := CrossViewModules(k); !errors.Is(err, ErrIncomplete) {
				t.Errorf("CrossViewModules over an incomplete list: %v", err)
			}
		}},
		{"bad name and state", func(s *scene) {
			s.putBytes(s.modules["evdev"]+s.off("module.name"), []byte("ev\x01dev"))
			s.put32(s.modules["virtio_ring"]+s.off("module.state"), 77)
		}, func(t *testing.T, k *Kernel) {
			ms, err := k.Modules()
			var ie *IncompleteError
			if !errors.As(err, &ie) || ie.Skipped != 2 || len(ms) != 1 || ms[0].Name != "virtio_net" {
				t.Errorf("Modules = %v, %v", ms, err)
			}
		}},
		{"absurd sizes and pointers", func(s *scene) {
			s.put32(s.modules["evdev"]+s.off("module.core_layout")+s.off("module_layout.size"), 1<<31)
			mk := s.modules["virtio_net"] + s.off("module.mkobj") + s.off("module_kobject.mod")
			s.put64(mk, 0xffffffffffffffff)
			s.put64(s.syms["module_kset"], 0x1234)
		}, func(t *testing.T, k *Kernel) {
			ms, err := k.Modules()
			if !errors.Is(err, ErrIncomplete) || len(ms) != 2 {
				t.Errorf("Modules = %v, %v", ms, err)
			}
			if _, err := k.ModulesFromSysfs(); !errors.Is(err, ErrInconsistent) {
				t.Errorf("ModulesFromSysfs with a bad module_kset: %v", err)
			}
			scan, err := k.ScanModules()
			if err != nil || len(scan) != 1 || scan[0].Name != "virtio_ring" {
				t.Errorf("ScanModules = %v, %v", scan, err)
			}
		}},
		{"self-referencing page table", func(s *scene) {
			// Point a page-directory entry of the module area back at the PML4.
			pd := uint64(0x5000)
			s.mem[pd+8*((modulesVAddr>>21)&511)+8] = 0x1003 & 0xff
			s.mem[pd+8*((modulesVAddr>>21)&511)+9] = 0x1003 >> 8
		}, func(t *testing.T, k *Kernel) {
			if _, err := k.ScanModules(); err != nil {
				t.Errorf("ScanModules: %v", err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := buildScene(t)
			c.corrupt(s)
			c.check(t, s.kernel())
		})
	}
}
