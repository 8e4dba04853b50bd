package deb

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/blakesmith/ar"
	"github.com/google/go-cmp/cmp"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

type tarFile struct {
	name string
	body string
	typ  byte
}

func makeTar(t testing.TB, files []tarFile) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: f.typ, ModTime: time.Unix(1700000000, 0)}
		if f.typ == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Typeflag == tar.TypeDir {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(f.body))
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func compress(t testing.TB, kind string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	switch kind {
	case "":
		return data
	case ".gz":
		w := gzip.NewWriter(&b)
		w.Write(data)
		w.Close()
	case ".xz":
		w, err := xz.WriterConfig{DictCap: 1 << 16}.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	case ".zst":
		w, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(data)
		w.Close()
	default:
		t.Fatalf("unknown compression %q", kind)
	}
	return b.Bytes()
}

type arMember struct {
	name string
	data []byte
}

// makeAr writes an ar archive with blakesmith/ar, an independent writer.
func makeAr(t testing.TB, members []arMember) []byte {
	t.Helper()
	var b bytes.Buffer
	w := ar.NewWriter(&b)
	if err := w.WriteGlobalHeader(); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if err := w.WriteHeader(&ar.Header{Name: m.name, Mode: 0o100644, Size: int64(len(m.data)), ModTime: time.Unix(1700000000, 0)}); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(m.data); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

const testControl = `Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2
Architecture: amd64
Depends: linux-image-6.1.0-56-amd64 (= 6.1.192-2)
Description: Linux for 64-bit PCs (meta-package)
 This package depends on the latest Linux kernel
 and modules for use on PCs.
`

// makeDeb builds a package with the given compression for both members.
func makeDeb(t testing.TB, comp string, data []tarFile) []byte {
	t.Helper()
	ctl := makeTar(t, []tarFile{{name: "./", typ: tar.TypeDir}, {name: "./control", body: testControl}})
	return makeAr(t, []arMember{
		{"debian-binary", []byte("2.0\n")},
		{"control.tar" + comp, compress(t, comp, ctl)},
		{"data.tar" + comp, compress(t, comp, makeTar(t, data))},
	})
}

var testData = []tarFile{
	{name: "./", typ: tar.TypeDir},
	{name: "./boot/", typ: tar.TypeDir},
	{name: "./boot/vmlinuz-6.1.0-test-amd64", body: "kernel image"},
	{name: "./lib/modules/6.1.0-test-amd64/kernel/fs/9p/9p.ko", body: "odd-sized module"},
	{name: "./usr/share/doc/x/copyright", body: ""},
}

func TestWalk(t *testing.T) {
	for _, comp := range []string{"", ".gz", ".xz", ".zst"} {
		t.Run("data.tar"+comp, func(t *testing.T) {
			pkg := makeDeb(t, comp, testData)
			var got []string
			err := Walk(bytes.NewReader(pkg), DefaultLimits, DataMember, func(h *tar.Header, name string, r io.Reader) error {
				b, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				got = append(got, name+"="+string(b))
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			want := []string{".=", "boot=", "boot/vmlinuz-6.1.0-test-amd64=kernel image",
				"lib/modules/6.1.0-test-amd64/kernel/fs/9p/9p.ko=odd-sized module", "usr/share/doc/x/copyright="}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("entries (-want +got):\n%s", diff)
			}
			ctl, err := ReadControl(bytes.NewReader(pkg), DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			if ctl["Package"] != "linux-image-amd64" || ctl["Version"] != "6.1.192-2" {
				t.Errorf("control = %v", ctl)
			}
			b, err := ReadFile(bytes.NewReader(pkg), DefaultLimits, DataMember, "boot/vmlinuz-6.1.0-test-amd64", 100)
			if err != nil || string(b) != "kernel image" {
				t.Errorf("ReadFile = %q, %v", b, err)
			}
		})
	}
}

func TestWalkStop(t *testing.T) {
	pkg := makeDeb(t, ".gz", testData)
	n := 0
	err := Walk(bytes.NewReader(pkg), DefaultLimits, DataMember, func(*tar.Header, string, io.Reader) error {
		n++
		return ErrStop
	})
	if err != nil || n != 1 {
		t.Errorf("Walk with ErrStop: %d calls, %v", n, err)
	}
	boom := errors.New("boom")
	err = Walk(bytes.NewReader(pkg), DefaultLimits, DataMember, func(*tar.Header, string, io.Reader) error { return boom })
	if !errors.Is(err, boom) {
		t.Errorf("Walk error = %v, want boom", err)
	}
}

func TestMalformed(t *testing.T) {
	good := makeDeb(t, ".gz", testData)
	small := DefaultLimits
	small.MaxEntries = 2
	tiny := DefaultLimits
	tiny.MaxEntrySize = 4
	hdr := func(name, size string) []byte {
		h := []byte(strings.Repeat(" ", 60))
		copy(h, name)
		copy(h[16:], "0")
		copy(h[28:], "0")
		copy(h[34:], "0")
		copy(h[40:], "0") // a one-digit mode: blakesmith/ar would panic here
		copy(h[48:], size)
		copy(h[58:], "`\n")
		return h
	}
	cases := []struct {
		name string
		pkg  []byte
		lim  Limits
		want string
	}{
		{"empty", nil, DefaultLimits, "ar magic"},
		{"not ar", []byte("PK\x03\x04 this is a zip file"), DefaultLimits, "not an ar archive"},
		{"truncated", good[:len(good)/2], DefaultLimits, ""},
		{"bad size", append([]byte("!<arch>\n"), hdr("debian-binary", "-4")...), DefaultLimits, "bad ar member size"},
		{"huge size", append([]byte("!<arch>\n"), hdr("debian-binary", "9999999999")...), DefaultLimits, "more than the limit"},
		{"bad terminator", append([]byte("!<arch>\n"), bytes.Repeat([]byte("x"), 60)...), DefaultLimits, "terminator"},
		{"no debian-binary", makeAr(t, []arMember{{"data.tar", makeTar(t, testData)}}), DefaultLimits, "not debian-binary"},
		{"version 3", makeAr(t, []arMember{{"debian-binary", []byte("3.0\n")}}), DefaultLimits, "unsupported package format"},
		{"no data", makeAr(t, []arMember{{"debian-binary", []byte("2.0\n")}}), DefaultLimits, "no data member"},
		{"bz2", makeAr(t, []arMember{{"debian-binary", []byte("2.0\n")}, {"data.tar.bz2", []byte("BZh")}}), DefaultLimits, "unsupported compression"},
		{"too many entries", good, small, "more than 2 tar entries"},
		{"entry too big", good, tiny, "more than the limit 4"},
		{"bad gzip", makeAr(t, []arMember{{"debian-binary", []byte("2.0\n")}, {"data.tar.gz", []byte("not gzip")}}), DefaultLimits, "gzip"},
		{"bad tar", makeAr(t, []arMember{{"debian-binary", []byte("2.0\n")}, {"data.tar", bytes.Repeat([]byte{1}, 1024)}}), DefaultLimits, "tar"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := Walk(bytes.NewReader(c.pkg), c.lim, DataMember, func(_ *tar.Header, _ string, r io.Reader) error {
				_, err := io.Copy(io.Discard, r)
				return err
			})
			if err == nil {
				t.Fatal("Walk succeeded on a malformed package")
			}
			if c.want != "" && !strings.Contains(err.Error(), c.want) {
				t.Errorf("error %q does not mention %q", err, c.want)
			}
		})
	}
}

func TestXZDictionaryLimit(t *testing.T) {
	var b bytes.Buffer
	w, err := xz.WriterConfig{DictCap: 8 << 20}.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(makeTar(t, testData))
	w.Close()
	pkg := makeAr(t, []arMember{{"debian-binary", []byte("2.0\n")}, {"data.tar.xz", b.Bytes()}})
	lim := DefaultLimits
	lim.MaxXZDict = 1 << 20
	err = Walk(bytes.NewReader(pkg), lim, DataMember, func(*tar.Header, string, io.Reader) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "dictionary") {
		t.Errorf("Walk = %v, want a dictionary-size error", err)
	}
	if err := Walk(bytes.NewReader(pkg), DefaultLimits, DataMember, func(*tar.Header, string, io.Reader) error { return nil }); err != nil {
		t.Errorf("Walk with the default limits: %v", err)
	}
}

func TestParseControl(t *testing.T) {
	c, err := ParseControl([]byte("package: a\nDescription: short\n long line\n .\n more\nInstalled-Size: 12\n\nPackage: second-paragraph\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Control{"Package": "a", "Description": "short\nlong line\n.\nmore", "Installed-Size": "12"}
	if diff := cmp.Diff(want, c); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	for _, bad := range []string{"", "\n\n", " continuation first\n", "no colon here\n", "bad key: x\n"} {
		if _, err := ParseControl([]byte(bad)); err == nil {
			t.Errorf("ParseControl(%q) succeeded", bad)
		}
	}
}

func TestParseRelations(t *testing.T) {
	cases := []struct {
		in   string
		want []Relation
	}{
		{"linux-image-6.1.0-56-amd64 (= 6.1.192-2)", []Relation{{{Name: "linux-image-6.1.0-56-amd64", Op: "=", Version: "6.1.192-2"}}}},
		{"a, b (>= 1:2.0~rc1) | c:any,\n d [amd64]", []Relation{
			{{Name: "a"}},
			{{Name: "b", Op: ">=", Version: "1:2.0~rc1"}, {Name: "c", Arch: "any"}},
			{{Name: "d"}},
		}},
		{"", nil},
		{"libc6 (<< 2.37)", []Relation{{{Name: "libc6", Op: "<<", Version: "2.37"}}}},
	}
	for _, c := range cases {
		got, err := ParseRelations(c.in)
		if err != nil {
			t.Errorf("ParseRelations(%q): %v", c.in, err)
			continue
		}
		if diff := cmp.Diff(c.want, got); diff != "" {
			t.Errorf("ParseRelations(%q) (-want +got):\n%s", c.in, diff)
		}
	}
	for _, bad := range []string{"Upper-Case", "a (= 1", "a (~ 1)", "a (>=)", "|"} {
		if _, err := ParseRelations(bad); err == nil {
			t.Errorf("ParseRelations(%q) succeeded", bad)
		}
	}
}

func TestCleanName(t *testing.T) {
	for in, want := range map[string]string{"./": ".", "./boot/x": "boot/x", "../../etc/passwd": "etc/passwd", "/abs//p/": "abs/p", "": "."} {
		if got := CleanName(in); got != want {
			t.Errorf("CleanName(%q) = %q, want %q", in, got, want)
		}
	}
}
