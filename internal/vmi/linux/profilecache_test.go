package linux

import (
	"bytes"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/gatevisor/gatevisor/internal/testvm"
	"github.com/gatevisor/gatevisor/internal/vmi"
)

// profileLayouts returns every cache of p that is computed on first use, in
// profileCache's order.
func profileLayouts(p *Profile) []any {
	return []any{boundsOf(p), layoutForTasks(p), layoutForModules(p), layoutForFiles(p), layoutForSockets(p)}
}

var layoutNames = []string{"bounds", "tasks", "modules", "files", "sockets"}

func emptyBTF(t *testing.T) *BTF {
	t.Helper()
	var b btf.Builder
	return builtBTF(t, &b)
}

// TestProfileCachesIndependent checks that each Profile computes its own
// layouts, once: two Profiles of one kernel (same banner, symbols and BTF)
// share nothing, a Profile whose BTF lacks the types fails alone whichever
// of the two is queried first, and a copy of a Profile computes from its
// own fields.
func TestProfileCachesIndependent(t *testing.T) {
	t.Run("same kernel", func(t *testing.T) {
		spec := synthBTF(t)
		p1, p2 := scProfile(), scProfile()
		p1.BTF, p2.BTF = spec, spec
		a, b := profileLayouts(p1), profileLayouts(p2)
		again := profileLayouts(p1)
		for i, name := range layoutNames {
			if a[i] == b[i] {
				t.Errorf("%s: two profiles share one layout", name)
			}
			if !reflect.DeepEqual(a[i], b[i]) {
				t.Errorf("%s: two profiles of one kernel differ:\n%+v\n%+v", name, a[i], b[i])
			}
			if again[i] != a[i] {
				t.Errorf("%s: computed again on a second query", name)
			}
		}
		if l := layoutForTasks(p1); l.err != nil || l.pidErr != nil || l.rqErr != nil {
			t.Errorf("synthetic task layout: %v %v %v", l.err, l.pidErr, l.rqErr)
		}
	})
	for _, badFirst := range []bool{true, false} {
		t.Run("one without BTF types, queried first "+strconv.FormatBool(badFirst), func(t *testing.T) {
			good, bad := scProfile(), scProfile()
			good.BTF, bad.BTF = synthBTF(t), emptyBTF(t)
			var gl, bl *taskLayout
			if badFirst {
				bl, gl = layoutForTasks(bad), layoutForTasks(good)
			} else {
				gl, bl = layoutForTasks(good), layoutForTasks(bad)
			}
			if gl.err != nil {
				t.Errorf("profile with the types: %v", gl.err)
			}
			if !errors.Is(bl.err, ErrNoField) {
				t.Errorf("profile without them: %v; want ErrNoField", bl.err)
			}
		})
	}
	t.Run("image facts", func(t *testing.T) {
		p1, p2 := scProfile(), scProfile()
		facts := &ImageFacts{Banner: testBanner}
		if err := p1.SetImage(facts); err != nil {
			t.Fatal(err)
		}
		if p1.Image() != facts || p2.Image() != nil {
			t.Errorf("Image() = %p, %p; want %p, nil", p1.Image(), p2.Image(), facts)
		}
	})
	t.Run("copy", func(t *testing.T) {
		p := scProfile()
		p.BTF = synthBTF(t)
		facts := &ImageFacts{Banner: testBanner}
		if err := p.SetImage(facts); err != nil {
			t.Fatal(err)
		}
		want := profileLayouts(p)
		wantBounds := *boundsOf(p)
		q := *p
		q.BTF = emptyBTF(t)
		q.Symbols = testProfile().Symbols // _text but no _stext/_etext
		if q.Image() != nil {
			t.Error("a copy has the original's image facts")
		}
		if l := layoutForTasks(&q); !errors.Is(l.err, ErrNoField) {
			t.Errorf("copy without BTF types: task layout error %v; want ErrNoField", l.err)
		}
		if b := boundsOf(&q); b.textLo != 0 || b.textHi != 0 || *b == wantBounds {
			t.Errorf("copy's bounds %+v; want its own, with no core text", *b)
		}
		for i, l := range profileLayouts(p) {
			if l != want[i] {
				t.Errorf("%s: the original's layout changed after a copy was queried", layoutNames[i])
			}
		}
		if p.Image() != facts {
			t.Error("the original lost its image facts")
		}
	})
}

// TestProfileConcurrentQueries has goroutines query one Profile at once, as
// the IDS and the gates do, from its first query: they race to compute each
// layout and to attach image facts. Each must get what a Profile queried by
// one goroutine gives. Run it with -race.
func TestProfileConcurrentQueries(t *testing.T) {
	const workers = 8
	type result struct {
		tasks, threads, idr, rq []Task
		modules, sysfs          []Module
		sockets                 []Socket
		table                   []SyscallEntry
		dispatch                []DispatchFinding
	}
	s := buildScene(t)
	objs := s.kernel()
	sc, m := sockKernel(t)
	facts := sc.Profile.Image()
	socketTasks := sockHeap(t, sc, m, map[int][]sockSpec{
		100: {{family: afInet, typ: sockStream, proto: 6, state: 10, local: []byte{0, 0, 0, 0}, remote: []byte{0, 0, 0, 0}, lport: 80, ino: 1001}},
	})
	query := func(objs, sc *Kernel) result {
		var r result
		var err error
		if r.tasks, err = objs.Tasks(); err != nil {
			t.Errorf("Tasks: %v", err)
		}
		if r.threads, err = objs.Threads(); err != nil {
			t.Errorf("Threads: %v", err)
		}
		if r.idr, err = objs.PIDNamespaceTasks(); err != nil {
			t.Errorf("PIDNamespaceTasks: %v", err)
		}
		if r.rq, err = objs.RunQueueTasks(); err != nil {
			t.Errorf("RunQueueTasks: %v", err)
		}
		if r.modules, err = objs.Modules(); err != nil {
			t.Errorf("Modules: %v", err)
		}
		if r.sysfs, err = objs.ModulesFromSysfs(); err != nil {
			t.Errorf("ModulesFromSysfs: %v", err)
		}
		if r.sockets, err = sc.Sockets(socketTasks); err != nil {
			t.Errorf("Sockets: %v", err)
		}
		if r.table, err = sc.SyscallTable(); err != nil {
			t.Errorf("SyscallTable: %v", err)
		}
		if r.dispatch, err = sc.CheckDispatch(); err != nil {
			t.Errorf("CheckDispatch: %v", err)
		}
		return r
	}
	// The reference: fresh Profiles of the same kernels, one goroutine.
	refObjs, refSc := *objs, *sc
	refObjs.Profile = &Profile{BTF: objs.Profile.BTF, Symbols: objs.Profile.Symbols}
	refSc.Profile = &Profile{Banner: sc.Profile.Banner, BTF: sc.Profile.BTF, Symbols: sc.Profile.Symbols}
	if err := refSc.Profile.SetImage(cloneFacts(facts)); err != nil {
		t.Fatal(err)
	}
	want := query(&refObjs, &refSc)
	if len(want.tasks) == 0 || len(want.modules) == 0 || len(want.sockets) != 1 || len(want.table) == 0 {
		t.Fatalf("reference query found too little: %+v", want)
	}

	start := make(chan struct{})
	got := make([]result, workers)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			// Each goroutine has its own Kernel (and address space), as
			// the IDS and each gate do; the Profiles are shared.
			o, k := *objs, *sc
			o.AS = &vmi.AddressSpace{Mem: objs.AS.Mem, CR3: objs.AS.CR3, Cache: vmi.NewTranslationCache()}
			k.AS = &vmi.AddressSpace{Mem: sc.AS.Mem, CR3: sc.AS.CR3}
			<-start
			if i%4 == 0 {
				// Attaching the same facts again, as a second LoadImage does.
				if err := k.Profile.SetImage(facts); err != nil {
					t.Error(err)
				}
			}
			got[i] = query(&o, &k)
		})
	}
	close(start)
	wg.Wait()
	for i := range got {
		if !reflect.DeepEqual(got[i], want) {
			t.Errorf("goroutine %d got:\n%+v\nwant:\n%+v", i, got[i], want)
		}
	}
	for _, p := range []*Profile{objs.Profile, sc.Profile} {
		a := profileLayouts(p)
		for i, l := range profileLayouts(p) {
			if l != a[i] {
				t.Errorf("%s: layout not computed once", layoutNames[i])
			}
		}
	}
}

// TestCachedProfileLayouts checks that a Profile loaded from the profile
// cache computes the same layouts as the Profile built from the kernel
// image, on the default kit's kernel.
func TestCachedProfileLayouts(t *testing.T) {
	k := testvm.Kit(t)
	dir := t.TempDir()
	if _, err := LoadProfile(k.Kernel, dir); err != nil {
		t.Fatal(err)
	}
	fresh, err := profileFromFile(k.Kernel, ProfileOptions{}) // symbols and BTF on the heap
	if err != nil {
		t.Fatal(err)
	}
	cached, err := LoadCachedProfile(dir, BannerKey(fresh.Banner))
	if err != nil {
		t.Fatalf("the profile was not cached: %v", err)
	}
	if _, ok := cached.BTF.src.(*bytes.Reader); ok {
		t.Error("the cached profile's BTF is in memory, not read from the cache file")
	}
	again, err := LoadProfile(k.Kernel, dir)
	if err != nil || again.BTF.offs.mem != nil {
		t.Errorf("LoadProfile of a cached kernel: %v; BTF index in memory: %v", err, err == nil && again.BTF.offs.mem != nil)
	}
	// Storing a cached profile again writes the same file: the mapped
	// form holds everything the cache has.
	dir2 := t.TempDir()
	if err := cached.store(dir2); err != nil {
		t.Fatal(err)
	}
	name := profileFile(BannerKey(fresh.Banner))
	f1, err1 := os.ReadFile(filepath.Join(dir, name))
	f2, err2 := os.ReadFile(filepath.Join(dir2, name))
	if err1 != nil || err2 != nil || !bytes.Equal(f1, f2) {
		t.Errorf("the cache file written again differs (%v, %v; %d and %d bytes)", err1, err2, len(f1), len(f2))
	}
	a, b := profileLayouts(fresh), profileLayouts(cached)
	for i, name := range layoutNames {
		if !reflect.DeepEqual(a[i], b[i]) {
			t.Errorf("%s: built %+v, cached %+v", name, a[i], b[i])
		}
	}
	if l := layoutForTasks(cached); l.err != nil || l.pidErr != nil || l.rqErr != nil {
		t.Errorf("task layout of the real kernel: %v %v %v", l.err, l.pidErr, l.rqErr)
	}
	for name, err := range map[string]error{"modules": layoutForModules(cached).err, "files": layoutForFiles(cached).err, "sockets": layoutForSockets(cached).err} {
		if err != nil {
			t.Errorf("%s layout of the real kernel: %v", name, err)
		}
	}
}

// TestNoPackageState enforces the package's rule (see doc.go): no
// package-level variable of a sync or sync/atomic type, and none that
// holds Profiles. What is computed about a kernel is kept on its Profile.
func TestNoPackageState(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		syncNames := map[string]bool{}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if path != "sync" && path != "sync/atomic" {
				continue
			}
			local := filepath.Base(path)
			if imp.Name != nil {
				local = imp.Name.Name
			}
			syncNames[local] = true
		}
		for _, decl := range f.Decls {
			gd, ok := decl.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				ast.Inspect(vs, func(n ast.Node) bool {
					switch n := n.(type) {
					case *ast.SelectorExpr:
						if x, ok := n.X.(*ast.Ident); ok && syncNames[x.Name] {
							t.Errorf("%s: package-level %s of type %s.%s: keep state on the Profile", fset.Position(n.Pos()), vs.Names[0].Name, x.Name, n.Sel.Name)
						}
					case *ast.Ident:
						if n.Name == "Profile" {
							t.Errorf("%s: package-level %s holds Profiles: keep state on the Profile", fset.Position(n.Pos()), vs.Names[0].Name)
						}
					}
					return true
				})
			}
		}
	}
}
