package initramfs

import (
	"bytes"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/cavaliergopher/cpio"
	"github.com/google/go-cmp/cmp"
)

type entry struct {
	Name, Link, Body string
	Mode             int64
	UID, GID         int
}

// readBack parses an archive with cavaliergopher/cpio, an independent
// newc reader.
func readBack(t *testing.T, data []byte) []entry {
	t.Helper()
	r := cpio.NewReader(bytes.NewReader(data))
	var out []entry
	for {
		h, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("read back: %v", err)
		}
		body, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, entry{Name: h.Name, Link: h.Linkname, Body: string(body), Mode: int64(h.Mode), UID: h.Uid, GID: h.Guid})
	}
}

func TestWriterRoundTrip(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(w.Dir("etc", 0o755))
	must(w.File("etc/shadow", 0o600, 0, 0, []byte("root:!:1::::::\n")))
	must(w.File("etc/odd", 0o644, 1000, 1000, []byte("abc"))) // padding after content
	must(w.Symlink("init", "bin/busybox"))
	must(w.CharDev("dev-console", 0o600, 5, 1))
	must(w.MkdirAll("lib/modules/6.1/kernel"))
	must(w.File("empty", 0o644, 0, 0, nil))
	must(w.Close())
	data := b.Bytes()
	if len(data)%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", len(data))
	}
	want := []entry{
		{Name: "etc", Mode: TypeDir | 0o755},
		{Name: "etc/shadow", Mode: TypeReg | 0o600, Body: "root:!:1::::::\n"},
		{Name: "etc/odd", Mode: TypeReg | 0o644, Body: "abc", UID: 1000, GID: 1000},
		{Name: "init", Mode: TypeSymlink | 0o777, Link: "bin/busybox"},
		{Name: "dev-console", Mode: TypeChar | 0o600},
		{Name: "lib", Mode: TypeDir | 0o755},
		{Name: "lib/modules", Mode: TypeDir | 0o755},
		{Name: "lib/modules/6.1", Mode: TypeDir | 0o755},
		{Name: "lib/modules/6.1/kernel", Mode: TypeDir | 0o755},
		{Name: "empty", Mode: TypeReg | 0o644},
	}
	if diff := cmp.Diff(want, readBack(t, data)); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	// The device numbers, which the reader does not expose.
	i := bytes.Index(data, []byte("dev-console\x00"))
	hdr := string(data[i-110 : i])
	major, _ := strconv.ParseUint(hdr[78:86], 16, 32)
	minor, _ := strconv.ParseUint(hdr[86:94], 16, 32)
	if major != 5 || minor != 1 {
		t.Errorf("dev-console rdev = %d:%d, want 5:1", major, minor)
	}
	if !strings.HasPrefix(hdr, "070701") {
		t.Errorf("header magic %q", hdr[:6])
	}
	if !w.Has("lib/modules") || w.Has("nope") {
		t.Error("Has is wrong")
	}
}

func TestWriterErrors(t *testing.T) {
	for _, name := range []string{"", "/abs", "a/../b", "..", "../x", "a//b", "a/", "nul\x00"} {
		w := NewWriter(io.Discard)
		if err := w.File(name, 0o644, 0, 0, nil); err == nil {
			t.Errorf("name %q accepted", name)
		}
	}
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(Header{Name: "f", Mode: TypeReg, Size: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("toolong")); err == nil {
		t.Error("write past the entry size accepted")
	}
	if err := w.Dir("next", 0o755); err == nil {
		t.Error("header accepted while the previous entry is short")
	}
	w = NewWriter(io.Discard)
	if err := w.WriteHeader(Header{Name: "d", Mode: TypeDir, Size: 1}); err == nil {
		t.Error("directory with content accepted")
	}
	if err := w.WriteHeader(Header{Name: "s", Mode: 0o140000}); err == nil {
		t.Error("socket accepted")
	}
	w.Close()
	if err := w.Dir("after", 0o755); err == nil {
		t.Error("write after close accepted")
	}
}
