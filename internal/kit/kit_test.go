package kit

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/blakesmith/ar"
	"github.com/cavaliergopher/cpio"
	"github.com/google/go-cmp/cmp"

	"github.com/gatevisor/gatevisor/internal/kit/deb"
	"github.com/gatevisor/gatevisor/internal/kit/initramfs"
)

func TestParseFileSpec(t *testing.T) {
	cases := []struct {
		in      string
		want    FileSpec
		wantErr string
	}{
		{in: "./app:/usr/bin/app", want: FileSpec{Host: "./app", Guest: "/usr/bin/app"}},
		{in: "/h/with:colon:/etc/x.conf", want: FileSpec{Host: "/h/with:colon", Guest: "/etc/x.conf"}},
		{in: "dir:/opt//demo/", want: FileSpec{Host: "dir", Guest: "/opt/demo"}},
		{in: "app", wantErr: "want HOST:GUEST"},
		{in: "app:usr/bin/app", wantErr: "must be absolute"},
		{in: ":/x", wantErr: "empty host path"},
		{in: "a:/", wantErr: "cannot be /"},
		{in: "a:/etc/../x", wantErr: `".."`},
		{in: "a:/x\x00y", wantErr: "NUL"},
	}
	for _, c := range cases {
		got, err := ParseFileSpec(c.in)
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("ParseFileSpec(%q) = %v, want error containing %q", c.in, err, c.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseFileSpec(%q): %v", c.in, err)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("ParseFileSpec(%q) (-want +got):\n%s", c.in, diff)
		}
	}
}

// makeBzImage returns a minimal file with a valid boot protocol header.
func makeBzImage(payload int) []byte {
	setupSects := 4
	b := make([]byte, (setupSects+1)*512+payload)
	b[0x1F1] = byte(setupSects)
	binary.LittleEndian.PutUint32(b[0x1F4:], uint32((payload+15)/16))
	binary.LittleEndian.PutUint16(b[0x1FE:], 0xAA55)
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], 0x020f)
	b[0x211] = 0x01
	return b
}

func TestCheckBzImage(t *testing.T) {
	dir := t.TempDir()
	good := makeBzImage(4096)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"good", good, ""},
		{"empty", nil, "only 0 bytes"},
		{"elf", mutate(func(b []byte) []byte { copy(b, "\x7fELF"); copy(b[0x202:], "xxxx"); return b }), "ELF"},
		{"no HdrS", mutate(func(b []byte) []byte { copy(b[0x202:], "Hdrs"); return b }), "HdrS"},
		{"no boot flag", mutate(func(b []byte) []byte { b[0x1FE] = 0; return b }), "0xAA55"},
		{"old protocol", mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[0x206:], 0x0105); return b }), "too old"},
		{"zImage", mutate(func(b []byte) []byte { b[0x211] = 0; return b }), "zImage"},
		{"truncated payload", good[:len(good)-1024], "does not fit"},
		{"setup too big", mutate(func(b []byte) []byte { b[0x1F1] = 200; return b }), "setup"},
	}
	for _, c := range cases {
		p := filepath.Join(dir, c.name)
		if err := os.WriteFile(p, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		err := CheckBzImage(p)
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrNotBzImage) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: CheckBzImage = %v, want ErrNotBzImage mentioning %q", c.name, err, c.want)
		}
	}
	if err := CheckBzImage(filepath.Join(dir, "missing")); err == nil || errors.Is(err, ErrNotBzImage) {
		t.Errorf("missing file: %v", err)
	}
	if err := CheckBzImage(dir); !errors.Is(err, ErrNotBzImage) {
		t.Errorf("directory: %v", err)
	}
}

func TestBusyboxApplets(t *testing.T) {
	bin := []byte("\x7fELF....junk\x00[\x00[[\x00acpid\x00ash\x00busybox\x00cat\x00httpd\x00init\x00insmod\x00ls\x00mount\x00poweroff\x00sh\x00" +
		"telnetd\x00udhcpc\x00wget\x00xargs\x00yes\x00zcat\x00aaa-not-sorted\x00more junk")
	bin = append(bin, bytes.Repeat([]byte("x"), 0)...)
	got, err := busyboxApplets(append(bin[:0:0], bin...))
	if err == nil {
		t.Fatalf("a table of %d names was accepted (want at least 20)", len(got))
	}
	bin = bytes.Replace(bin, []byte("zcat\x00"), []byte("zcat\x00zcip\x00zz\x00zzz\x00"), 1)
	got, err = busyboxApplets(bin)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"[", "[[", "acpid", "ash", "cat", "httpd", "init", "insmod", "ls", "mount", "poweroff", "sh",
		"telnetd", "udhcpc", "wget", "xargs", "yes", "zcat", "zcip", "zz", "zzz"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	if _, err := busyboxApplets([]byte("no table")); err == nil {
		t.Error("no table: no error")
	}
	// trixie's busybox 1.37: the table follows another byte than a NUL,
	// and an earlier "[\0[[\0" that starts no table is passed over.
	b137 := append([]byte("\x7fELF [\x00[[\x00-x\x00 "), bytes.Replace(bin, []byte("\x00[\x00[[\x00"), []byte("\xae [\x00[[\x00"), 1)...)
	if got, err := busyboxApplets(b137); err != nil || len(got) != len(want) {
		t.Errorf("busybox 1.37 layout: %d names, %v", len(got), err)
	}
}

// readArchives reads concatenated newc archives (each padded to 4 bytes).
func readArchives(t *testing.T, data []byte) [][]string {
	t.Helper()
	var out [][]string
	for len(data) > 0 {
		for len(data) > 0 && data[0] == 0 {
			data = data[1:]
		}
		if len(data) == 0 {
			break
		}
		br := bytes.NewReader(data)
		r := cpio.NewReader(br)
		var names []string
		for {
			h, err := r.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("archive %d: %v", len(out), err)
			}
			body, _ := io.ReadAll(r)
			s := h.Name + " " + h.Mode.String()
			if h.Linkname != "" {
				s += " -> " + h.Linkname
			}
			if len(body) > 0 {
				s += " = " + string(body)
			}
			names = append(names, s)
		}
		out = append(out, names)
		// The reader stops after the trailer; find where this archive ends.
		end := bytes.Index(data, []byte("TRAILER!!!\x00"))
		if end < 0 {
			t.Fatal("no trailer")
		}
		end += len("TRAILER!!!\x00")
		data = data[(end+3)&^3:]
	}
	return out
}

func TestAppendFiles(t *testing.T) {
	dir := t.TempDir()
	var base bytes.Buffer
	w := initramfs.NewWriter(&base)
	w.Dir("etc", 0o755)
	w.File("etc/motd", 0o644, 0, 0, []byte("base"))
	w.Close()
	base.WriteString("x") // an odd length, to exercise the alignment
	basePath := filepath.Join(dir, "base")
	os.WriteFile(basePath, base.Bytes(), 0o644)

	host := filepath.Join(dir, "host")
	os.MkdirAll(filepath.Join(host, "tree", "sub"), 0o755)
	os.WriteFile(filepath.Join(host, "app"), []byte("#!/bin/sh\n"), 0o750)
	os.WriteFile(filepath.Join(host, "tree", "a.conf"), []byte("a=1"), 0o600)
	os.WriteFile(filepath.Join(host, "tree", "sub", "b"), []byte("b"), 0o644)
	os.Symlink("a.conf", filepath.Join(host, "tree", "link"))

	out := filepath.Join(dir, "out")
	adds := []FileSpec{
		{Host: filepath.Join(host, "app"), Guest: "/usr/local/bin/app"},
		{Host: filepath.Join(host, "tree"), Guest: "/opt/tree"},
		{Host: filepath.Join(host, "app"), Guest: "/tmp/app", Mode: 0o700},
	}
	if err := AppendFiles(basePath, adds, out); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(out)
	if !bytes.HasPrefix(data, base.Bytes()) {
		t.Fatal("output does not start with the base initrd")
	}
	arch := readArchives(t, data[:base.Len()-1])
	second := readArchives(t, data[(base.Len()+3)&^3:])
	if len(arch) != 1 || len(second) != 1 {
		t.Fatalf("archives: %d + %d", len(arch), len(second))
	}
	want := []string{ // name, octal mode, link target or content
		"usr 040755", "usr/local 040755", "usr/local/bin 040755",
		"usr/local/bin/app 0100750 = #!/bin/sh\n",
		"opt 040755", "opt/tree 040755",
		"opt/tree/a.conf 0100600 = a=1",
		"opt/tree/link 0120777 -> a.conf",
		"opt/tree/sub 040755", "opt/tree/sub/b 0100644 = b",
		"tmp 041777", "tmp/app 0100700 = #!/bin/sh\n",
	}
	if diff := cmp.Diff(want, second[0]); diff != "" {
		t.Errorf("added archive (-want +got):\n%s", diff)
	}

	// A gzip base is kept byte for byte, the added archive follows it.
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(base.Bytes())
	zw.Close()
	os.WriteFile(basePath, gz.Bytes(), 0o644)
	if err := AppendFiles(basePath, adds[:1], out); err != nil {
		t.Fatal(err)
	}
	data, _ = os.ReadFile(out)
	if !bytes.HasPrefix(data, gz.Bytes()) || len(readArchives(t, data[(gz.Len()+3)&^3:])) != 1 {
		t.Error("gzip base: bad output")
	}

	for _, bad := range [][]FileSpec{
		{{Host: filepath.Join(host, "missing"), Guest: "/x"}},
		{{Host: filepath.Join(host, "app"), Guest: "relative"}},
	} {
		if err := AppendFiles(basePath, bad, out); err == nil {
			t.Errorf("AppendFiles(%v) succeeded", bad)
		}
	}
	if err := AppendFiles(filepath.Join(dir, "nobase"), adds, out); err == nil {
		t.Error("missing base accepted")
	}
}

func TestKernelDependency(t *testing.T) {
	cases := []struct {
		depends, want string
	}{
		{"linux-image-6.1.0-56-amd64 (= 6.1.192-2)", "linux-image-6.1.0-56-amd64=6.1.192-2"},
		{"firmware-x, linux-image-6.1.0-9-amd64", "linux-image-6.1.0-9-amd64"},
		{"linux-image-amd64-signed-template | linux-image-6.12.1-amd64 (>= 1)", "linux-image-6.12.1-amd64"},
	}
	for _, c := range cases {
		got, err := kernelDependency(deb.Control{"Package": "linux-image-amd64", "Depends": c.depends})
		if err != nil || got != c.want {
			t.Errorf("kernelDependency(%q) = %q, %v; want %q", c.depends, got, err, c.want)
		}
	}
	if _, err := kernelDependency(deb.Control{"Depends": "busybox"}); err == nil {
		t.Error("no kernel dependency: no error")
	}
}

func TestModulesDepAndRcS(t *testing.T) {
	rel := "6.1.0-test"
	p := "lib/modules/" + rel + "/kernel/"
	mods := []Module{
		{Name: "virtio", Path: p + "virtio.ko"},
		{Name: "virtio_ring", Path: p + "virtio_ring.ko"},
		{Name: "failover", Path: p + "failover.ko"},
		{Name: "net_failover", Path: p + "net_failover.ko", Depends: []string{"failover"}},
		{Name: "virtio_net", Path: p + "virtio_net.ko", Depends: []string{"net_failover", "virtio_ring", "virtio"}},
	}
	want := "kernel/virtio.ko:\nkernel/virtio_ring.ko:\nkernel/failover.ko:\nkernel/net_failover.ko: kernel/failover.ko\n" +
		"kernel/virtio_net.ko: kernel/net_failover.ko kernel/failover.ko kernel/virtio_ring.ko kernel/virtio.ko\n"
	if diff := cmp.Diff(want, string(modulesDep(mods, rel))); diff != "" {
		t.Errorf("modules.dep (-want +got):\n%s", diff)
	}
	script := rcS(mods, rel)
	i, j := strings.Index(script, "load failover kernel/failover.ko\n"), strings.Index(script, "load virtio_net kernel/virtio_net.ko\n")
	if i < 0 || j < i {
		t.Errorf("rcS does not load the modules in order:\n%s", script)
	}
	if !strings.HasSuffix(script, "say ready\n") || !strings.Contains(rcSHead, `echo "gatevisor-guest: $*"`) {
		t.Error("rcS does not end by printing the ready marker")
	}
}

func TestCacheDir(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/x/cache")
	if d, err := CacheDir(); err != nil || d != "/x/cache/gatevisor" {
		t.Errorf("CacheDir = %q, %v", d, err)
	}
	t.Setenv("XDG_CACHE_HOME", "relative") // ignored, as the XDG spec says
	t.Setenv("HOME", "/home/u")
	if d, err := CacheDir(); err != nil || d != "/home/u/.cache/gatevisor" {
		t.Errorf("CacheDir = %q, %v", d, err)
	}
}

func TestLoadVerifies(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty dir: %v", err)
	}
	for name, body := range map[string]string{"vmlinuz": "k", "initrd": "i", "initrd.base": "i", "config": "c"} {
		os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644)
	}
	m := Manifest{Format: FormatVersion, KernelRelease: "r", Append: DefaultAppend}
	var err error
	for _, x := range []struct {
		dst  *FileSum
		name string
	}{{&m.Kernel, "vmlinuz"}, {&m.Initrd, "initrd"}, {&m.InitrdBase, "initrd.base"}, {&m.Config, "config"}} {
		if *x.dst, err = sumOf(dir, x.name); err != nil {
			t.Fatal(err)
		}
	}
	if err := writeManifest(dir, &m); err != nil {
		t.Fatal(err)
	}
	k, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if k.Kernel != filepath.Join(dir, "vmlinuz") || k.Append != DefaultAppend {
		t.Errorf("Load = %+v", k)
	}
	os.WriteFile(filepath.Join(dir, "initrd"), []byte("I"), 0o644)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("tampered initrd: %v", err)
	}
	m.Format = FormatVersion + 1
	writeManifest(dir, &m)
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "format") {
		t.Errorf("other format: %v", err)
	}
}

func TestLockSerializes(t *testing.T) {
	p := filepath.Join(t.TempDir(), "kit.lock")
	var progress bytes.Buffer
	opts := &Options{Progress: &progress}
	unlock, err := lockFile(context.Background(), p, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := lockFile(ctx, p, opts); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second lock while held: %v", err)
	}
	if !strings.Contains(progress.String(), "waiting for another gatevisor") {
		t.Errorf("no waiting message: %q", progress.String())
	}
	unlock()
	unlock2, err := lockFile(context.Background(), p, opts)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

// makeKO builds a minimal ELF64 object with a .modinfo section.
func makeKO(modinfo ...string) []byte {
	info := []byte(strings.Join(modinfo, "\x00") + "\x00")
	shstr := []byte("\x00.modinfo\x00.shstrtab\x00")
	infoOff := uint64(64)
	shstrOff := infoOff + uint64(len(info))
	shOff := (shstrOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: 1,
		Shoff: shOff, Ehsize: 64, Shentsize: 64, Shnum: 3, Shstrndx: 2}
	copy(hdr.Ident[:], elf.ELFMAG)
	hdr.Ident[elf.EI_CLASS], hdr.Ident[elf.EI_DATA], hdr.Ident[elf.EI_VERSION] = 2, 1, 1
	binary.Write(&b, binary.LittleEndian, hdr)
	b.Write(info)
	b.Write(shstr)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	for _, s := range []elf.Section64{{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: infoOff, Size: uint64(len(info)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: shstrOff, Size: uint64(len(shstr)), Addralign: 1}} {
		binary.Write(&b, binary.LittleEndian, s)
	}
	return b.Bytes()
}

// writeKernelDeb writes a small kernel package: the files are in the given
// tar order, so dependencies may come before or after their users.
func writeKernelDeb(t *testing.T, path, rel string, files [][2]string) {
	t.Helper()
	var tb bytes.Buffer
	tw := tar.NewWriter(&tb)
	for _, f := range files {
		tw.WriteHeader(&tar.Header{Name: "./" + f[0], Mode: 0o644, Size: int64(len(f[1])), Typeflag: tar.TypeReg})
		tw.Write([]byte(f[1]))
	}
	tw.Close()
	var zb bytes.Buffer
	zw := gzip.NewWriter(&zb)
	zw.Write(tb.Bytes())
	zw.Close()
	var out bytes.Buffer
	aw := ar.NewWriter(&out)
	aw.WriteGlobalHeader()
	for _, m := range []struct {
		name string
		data []byte
	}{{"debian-binary", []byte("2.0\n")}, {"data.tar.gz", zb.Bytes()}} {
		aw.WriteHeader(&ar.Header{Name: m.name, Mode: 0o100644, Size: int64(len(m.data))})
		aw.Write(m.data)
	}
	if err := os.WriteFile(path, out.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestExtractKernel(t *testing.T) {
	rel := "6.1.0-test-amd64"
	md := "lib/modules/" + rel + "/kernel/"
	config := "CONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_NET=m\nCONFIG_VIRTIO_BLK=y\nCONFIG_VIRTIO_CONSOLE=m\n" +
		"CONFIG_9P_FS=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_NET_9P_FD=m\nCONFIG_VIRTIO_FS=m\nCONFIG_ACPI_BUTTON=m\nCONFIG_INPUT_EVDEV=m\n"
	mod := func(name string, deps string) [2]string {
		dir := "drivers/"
		return [2]string{md + dir + strings.ReplaceAll(name, "_", "-") + ".ko", string(makeKO("name="+name, "depends="+deps))}
	}
	files := [][2]string{
		{"boot/vmlinuz-" + rel, string(makeBzImage(1024))},
		{"boot/config-" + rel, config},
		// virtio_ring comes before anything that needs it: the second pass fetches it.
		mod("virtio_ring", ""),
		mod("9p", "9pnet,netfs"),
		mod("9pnet", ""),
		mod("9pnet_virtio", "9pnet,virtio_ring,virtio"),
		mod("9pnet_fd", "9pnet"),
		mod("button", ""),
		mod("evdev", ""),
		mod("fuse", ""),
		mod("netfs", ""),
		mod("unrelated", "virtio"),
		mod("virtio_console", "virtio_ring,virtio"),
		mod("virtio_net", "virtio_ring,virtio"),
		mod("virtio_pci", "virtio_ring,virtio"),
		mod("virtiofs", "fuse,virtio_ring,virtio"),
		{"lib/modules/" + rel + "/modules.builtin", "kernel/drivers/virtio.ko\nkernel/drivers/virtio_blk.ko\n"},
	}
	dir := t.TempDir()
	debPath := filepath.Join(dir, "k.deb")
	writeKernelDeb(t, debPath, rel, files)
	kx, err := extractKernel(context.Background(), debPath, dir, wantFeatures)
	if err != nil {
		t.Fatal(err)
	}
	var order []string
	for _, m := range kx.modules {
		order = append(order, m.Name)
		if kx.modData[m.Name] == nil {
			t.Errorf("module %s has no content", m.Name)
		}
	}
	want := []string{"virtio_ring", "virtio_pci", "virtio_net", "virtio_console", "9pnet", "netfs", "9p", "9pnet_virtio", "9pnet_fd", "fuse", "virtiofs", "button", "evdev"}
	if diff := cmp.Diff(want, order); diff != "" {
		t.Errorf("load order (-want +got):\n%s", diff)
	}
	if kx.release != rel {
		t.Errorf("release %q", kx.release)
	}
	for _, f := range kx.features {
		if f.Name == "virtio-blk" && (f.Value != "y" || f.Module != "") {
			t.Errorf("virtio-blk feature = %+v, want builtin", f)
		}
	}
	if kx.modules[2].Path != md+"drivers/virtio-net.ko" || !cmp.Equal(kx.modules[2].Depends, []string{"virtio_ring"}) {
		t.Errorf("virtio_net = %+v (virtio is builtin and must not be listed)", kx.modules[2])
	}
	if err := CheckBzImage(filepath.Join(dir, "vmlinuz")); err != nil {
		t.Error(err)
	}

	// A kernel without a needed feature is refused with its config symbol.
	files[1][1] = strings.Replace(config, "CONFIG_VIRTIO_FS=m", "# CONFIG_VIRTIO_FS is not set", 1)
	writeKernelDeb(t, debPath, rel, files)
	if _, err := extractKernel(context.Background(), debPath, dir, wantFeatures); err == nil || !strings.Contains(err.Error(), "CONFIG_VIRTIO_FS") {
		t.Errorf("missing feature: %v", err)
	}
	// A dependency cycle is reported.
	files[1][1] = config
	files[2] = mod("virtio_ring", "virtio_pci")
	writeKernelDeb(t, debPath, rel, files)
	if _, err := extractKernel(context.Background(), debPath, dir, wantFeatures); err == nil || !strings.Contains(err.Error(), "cycle") {
		t.Errorf("cycle: %v", err)
	}
}
