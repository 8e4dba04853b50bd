package kmod

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// makeKO builds a minimal ELF64 relocatable object with a .modinfo section
// holding the given key=value strings, as modpost writes them.
func makeKO(t testing.TB, modinfo ...string) []byte {
	t.Helper()
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	const ehsize, shentsize = 64, 64
	infoOff := uint64(ehsize)
	shstrOff := infoOff + uint64(len(info))
	shOff := (shstrOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: ehsize, Shentsize: shentsize, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	sections := []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Flags: uint64(elf.SHF_ALLOC), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1},
	}
	for _, s := range sections {
		binary.Write(&b, binary.LittleEndian, s)
	}
	return b.Bytes()
}

func TestReadModinfo(t *testing.T) {
	ko := makeKO(t, "license=GPL", "depends=virtio,virtio_ring", "retpoline=Y", "intree=Y", "name=virtio_net",
		"vermagic=6.1.0-56-amd64 SMP preempt mod_unload modversions ")
	info, err := ReadModinfo(ko)
	if err != nil {
		t.Fatal(err)
	}
	want := Info{Name: "virtio_net", Depends: []string{"virtio", "virtio_ring"}, License: "GPL",
		Vermagic: "6.1.0-56-amd64 SMP preempt mod_unload modversions "}
	if diff := cmp.Diff(want, info); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestReadModinfoErrors(t *testing.T) {
	noInfo := makeKO(t, "name=x")
	noInfo = bytes.Replace(noInfo, []byte(".modinfo"), []byte(".notinfo"), 1)
	for name, data := range map[string][]byte{
		"empty":      nil,
		"not ELF":    []byte("#!/bin/sh\necho not a module\n"),
		"no section": noInfo,
		"truncated":  makeKO(t, "name=x")[:80],
	} {
		if _, err := ReadModinfo(data); !errors.Is(err, ErrNotModule) {
			t.Errorf("%s: ReadModinfo = %v, want ErrNotModule", name, err)
		}
	}
}

func TestParseModinfo(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want Info
		err  bool
	}{
		{"no depends", "name=virtio\x00depends=\x00", Info{Name: "virtio"}, false},
		{"dash normalized", "name=virtio-rng\x00depends=virtio,rng-core\x00", Info{Name: "virtio_rng", Depends: []string{"virtio", "rng_core"}}, false},
		{"padding", "\x00\x00name=9p\x00\x00\x00depends=9pnet,netfs,fscache\x00\x00", Info{Name: "9p", Depends: []string{"9pnet", "netfs", "fscache"}}, false},
		{"junk entries", "noequals\x00=\x00name=a\x00", Info{Name: "a"}, false},
		{"two depends", "depends=a\x00depends=b\x00", Info{}, true},
		{"bad dep", "depends=a,../evil\x00", Info{}, true},
		{"bad name", "name=a b\x00", Info{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := ParseModinfo([]byte(c.in))
			if (err != nil) != c.err {
				t.Fatalf("err = %v, want error %v", err, c.err)
			}
			if diff := cmp.Diff(c.want, got); !c.err && diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	many := "depends=" + strings.Repeat("a,", MaxDepends+1)
	if _, err := ParseModinfo([]byte(many)); err == nil {
		t.Error("ParseModinfo accepted more than MaxDepends dependencies")
	}
}

func TestDecompress(t *testing.T) {
	ko := makeKO(t, "name=fuse", "depends=")
	var gz, xzb, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(ko)
	gw.Close()
	xw, _ := xz.NewWriter(&xzb)
	xw.Write(ko)
	xw.Close()
	zw, _ := zstd.NewWriter(&zs)
	zw.Write(ko)
	zw.Close()
	for name, data := range map[string][]byte{"fuse.ko": ko, "fuse.ko.gz": gz.Bytes(), "fuse.ko.xz": xzb.Bytes(), "fuse.ko.zst": zs.Bytes()} {
		got, err := Decompress(name, data, MaxModule)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		info, err := ReadModinfo(got)
		if err != nil || info.Name != "fuse" {
			t.Errorf("%s: ReadModinfo = %+v, %v", name, info, err)
		}
		if _, err := Decompress(name, data, 16); err == nil {
			t.Errorf("%s: no error past the size limit", name)
		}
	}
	if _, err := Decompress("fuse.ko.bz2", ko, MaxModule); !errors.Is(err, ErrNotModule) {
		t.Errorf("unknown suffix: %v", err)
	}
	if _, err := Decompress("fuse.ko.xz", []byte("not xz"), MaxModule); err == nil {
		t.Error("bad xz accepted")
	}
}

func TestNameFromPath(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/9p/9p.ko":                   "9p",
		"kernel/drivers/char/virtio-rng.ko.xz": "virtio_rng",
		"x/virtiofs.ko.zst":                    "virtiofs",
		"modules.builtin":                      "",
		".ko":                                  "",
		"kernel/a.kogz":                        "",
	} {
		got, ok := NameFromPath(in)
		if got != want || ok != (want != "") {
			t.Errorf("NameFromPath(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
}

func TestOrder(t *testing.T) {
	deps := map[string][]string{
		"virtio":                nil,
		"virtio_ring":           nil,
		"virtio_pci_modern_dev": nil,
		"virtio_pci":            {"virtio_pci_modern_dev", "virtio_ring", "virtio"},
		"failover":              nil,
		"net_failover":          {"failover"},
		"virtio_net":            {"net_failover", "virtio_ring", "virtio"},
		"9pnet":                 nil,
		"netfs":                 nil,
		"fscache":               {"netfs"},
		"9p":                    {"9pnet", "netfs", "fscache"},
		"crc32c_generic":        nil,
		"uses_builtin":          {"crc32c_generic", "virtio"},
	}
	cases := []struct {
		name    string
		roots   []string
		builtin map[string]bool
		want    []string
	}{
		{"chain", []string{"net_failover"}, nil, []string{"failover", "net_failover"}},
		{"diamond", []string{"virtio_pci", "virtio_net"}, nil,
			[]string{"virtio_pci_modern_dev", "virtio_ring", "virtio", "virtio_pci", "failover", "net_failover", "virtio_net"}},
		{"shared deps once", []string{"9p", "fscache"}, nil, []string{"9pnet", "netfs", "fscache", "9p"}},
		{"builtin left out", []string{"uses_builtin"}, map[string]bool{"crc32c_generic": true}, []string{"virtio", "uses_builtin"}},
		{"builtin root", []string{"virtio"}, map[string]bool{"virtio": true}, nil},
		{"dash in root", []string{"net-failover"}, nil, []string{"failover", "net_failover"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Order(c.roots, deps, c.builtin)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
			// Every module after its dependencies.
			pos := map[string]int{}
			for i, m := range got {
				pos[m] = i
			}
			for _, m := range got {
				for _, d := range deps[m] {
					if p, ok := pos[d]; ok && p > pos[m] {
						t.Errorf("%s loads before its dependency %s", m, d)
					}
				}
			}
		})
	}
}

func TestOrderErrors(t *testing.T) {
	cyc := map[string][]string{"a": {"b"}, "b": {"c"}, "c": {"a"}, "self": {"self"}}
	_, err := Order([]string{"a"}, cyc, nil)
	if !errors.Is(err, ErrCycle) || !strings.Contains(err.Error(), "a -> b -> c -> a") {
		t.Errorf("cycle: %v", err)
	}
	if _, err := Order([]string{"self"}, cyc, nil); !errors.Is(err, ErrCycle) {
		t.Errorf("self cycle: %v", err)
	}
	// A cycle through a builtin module is broken by it.
	if got, err := Order([]string{"a"}, cyc, map[string]bool{"c": true}); err != nil || !cmp.Equal(got, []string{"b", "a"}) {
		t.Errorf("cycle through builtin: %v, %v", got, err)
	}
	_, err = Order([]string{"x"}, map[string][]string{"x": {"gone"}}, nil)
	if !errors.Is(err, ErrMissing) || !strings.Contains(err.Error(), "gone (needed by x)") {
		t.Errorf("missing: %v", err)
	}
	if _, err := Order([]string{"nothing"}, nil, nil); !errors.Is(err, ErrMissing) {
		t.Errorf("missing root: %v", err)
	}
}

func TestClosure(t *testing.T) {
	deps := map[string][]string{"a": {"b", "c"}, "b": {"a"}, "c": {"unknown"}}
	got := Closure([]string{"a"}, deps, map[string]bool{"c": true})
	if diff := cmp.Diff([]string{"a", "b"}, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestParseConfigAndBuiltin(t *testing.T) {
	cfg := ParseConfig([]byte("#\n# Automatically generated\nCONFIG_VIRTIO=m\nCONFIG_UNIX=y\n# CONFIG_FOO is not set\nCONFIG_HZ=250\nCONFIG_S=\"x y\"\n"))
	want := map[string]string{"CONFIG_VIRTIO": "m", "CONFIG_UNIX": "y", "CONFIG_FOO": "n", "CONFIG_HZ": "250", "CONFIG_S": `"x y"`}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("config (-want +got):\n%s", diff)
	}
	b := ParseBuiltin([]byte("kernel/drivers/char/mem.ko\nkernel/net/unix/unix.ko\n\nnot-a-module\n"))
	if diff := cmp.Diff(map[string]bool{"mem": true, "unix": true}, b); diff != "" {
		t.Errorf("builtin (-want +got):\n%s", diff)
	}
}

// FuzzParseModinfo checks the .modinfo string parser on arbitrary bytes.
func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("name=virtio_net\x00depends=net_failover,virtio_ring,virtio\x00vermagic=6.1.0 SMP\x00"))
	f.Add([]byte("depends=\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ParseModinfo(data)
		if err != nil {
			return
		}
		if len(info.Depends) > MaxDepends {
			t.Fatalf("%d dependencies", len(info.Depends))
		}
		for _, d := range info.Depends {
			if !validName(d) || strings.Contains(d, "-") {
				t.Fatalf("bad dependency %q", d)
			}
		}
	})
}

// FuzzReadModinfo checks the ELF path: arbitrary bytes as a module image.
func FuzzReadModinfo(f *testing.F) {
	f.Add(makeKO(f, "name=9p", "depends=9pnet,netfs,fscache"))
	f.Add(makeKO(f, "name=virtio"))
	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := ReadModinfo(data)
		if err == nil && info.Name != "" && !validName(info.Name) {
			t.Fatalf("bad name %q", info.Name)
		}
	})
}
