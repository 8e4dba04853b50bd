package linux

import (
	"encoding/binary"
	"sync"
	"testing"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

var (
	fuzzSceneOnce sync.Once
	fuzzScene     *scene
)

// fuzzKernel returns the synthetic scene's kernel over a copy of its memory
// patched by data: each 12-byte record is a little-endian uint32 offset
// (modulo the memory size, so page tables, objects and the module area are
// all targets) and a uint64 value written there.
func fuzzKernel(t *testing.T, data []byte) *Kernel {
	fuzzSceneOnce.Do(func() {
		fuzzScene = buildScene(t)
		fuzzScene.kernel()
	})
	s := fuzzScene
	mem := append(flatMem(nil), s.mem...)
	for len(data) >= 12 && len(data) <= 12*256 {
		off := uint64(binary.LittleEndian.Uint32(data)) % (synthMemSize - 8)
		binary.LittleEndian.PutUint64(mem[off:], binary.LittleEndian.Uint64(data[4:]))
		data = data[12:]
	}
	return &Kernel{Profile: s.prof, Mem: mem, AS: &vmi.AddressSpace{Mem: mem, CR3: 0x1000, Cache: vmi.NewTranslationCache()}}
}

// fuzzPatch encodes one fuzz record.
func fuzzPatch(off uint64, v uint64) []byte {
	b := make([]byte, 12)
	binary.LittleEndian.PutUint32(b, uint32(off))
	binary.LittleEndian.PutUint64(b[4:], v)
	return b
}

func addSeeds(f *testing.F) {
	s := buildScene(f)
	f.Add([]byte{})
	// A task list that loops, a self-referencing PML4 entry, an xarray node
	// pointing at itself, a module list poisoned, a giant dentry name.
	f.Add(fuzzPatch(s.pa(s.tasks[70]+s.off("task_struct.tasks")), s.tasks[1]+s.off("task_struct.tasks")))
	f.Add(fuzzPatch(0x1000+8*((modulesVAddr>>39)&511), 0x1003))
	f.Add(append(fuzzPatch(s.pa(s.pidNodeChildren[0]+s.off("xa_node.slots")), s.pidNodeChildren[0]|2),
		fuzzPatch(s.pa(s.modules["evdev"]+s.off("module.list")), listPoison1)...))
	f.Add(fuzzPatch(0x3000+8*((synthDirectMap>>21)&511), 0x1083))
}

// FuzzTasks runs every task listing and the process cross-view over
// corrupted guest memory: they must return, without panicking, in bounded
// time.
func FuzzTasks(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		k := fuzzKernel(t, data)
		k.Tasks()
		k.Threads()
		k.PIDNamespaceTasks()
		k.RunQueueTasks()
		CrossViewProcesses(k)
	})
}

// FuzzModules does the same for the module listings.
func FuzzModules(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		k := fuzzKernel(t, data)
		k.Modules()
		k.ModulesFromSysfs()
		k.ScanModules()
		CrossViewModules(k)
	})
}
