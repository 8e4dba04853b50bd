package kit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeKit writes a verifiable kit of suite ("" for the default kit) into dir.
func fakeKit(t *testing.T, dir, suite, release string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"vmlinuz": "kernel " + release, "initrd": "i", "initrd.base": "i", "config": "c"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m := Manifest{Format: FormatVersion, KernelRelease: release, Append: DefaultAppend}
	if suite != "" {
		m.Suite, m.Arch = suite, "amd64"
	}
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
}

func TestFindAndList(t *testing.T) {
	cache := t.TempDir()
	if _, err := Find(cache, ""); !errors.Is(err, ErrUnknownKit) || !strings.Contains(err.Error(), "gatevisor kit build") {
		t.Errorf("no default kit: %v", err)
	}
	fakeKit(t, filepath.Join(cache, "kit"), "", "6.1.0-57-amd64")
	bpo := DerivedName("bookworm-backports", "6.12.95+deb12-amd64")
	fakeKit(t, filepath.Join(cache, "kits", bpo), "bookworm-backports", "6.12.95+deb12-amd64")
	fakeKit(t, filepath.Join(cache, "kits", "mine"), "trixie", "6.12.117+deb13-amd64")
	fakeKit(t, filepath.Join(cache, "kits", "mine2"), "trixie", "6.12.118+deb13-amd64")

	for _, tc := range []struct{ name, want string }{
		{"", DefaultName}, {DefaultName, DefaultName}, {bpo, bpo}, {"bookworm-backports", bpo}, {"mine", "mine"},
	} {
		k, err := Find(cache, tc.name)
		if err != nil || k.Name != tc.want {
			t.Errorf("Find(%q) = %v, %v; want kit %s", tc.name, k, err, tc.want)
		}
	}
	for _, tc := range []struct{ name, says string }{
		{"trixie", "2 kits of trixie (mine, mine2)"},
		{"nosuch", "'gatevisor kit ls'"},
		{"../kit", "bad kit name"},
		{"BAD", "bad kit name"},
	} {
		if _, err := Find(cache, tc.name); !errors.Is(err, ErrUnknownKit) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("Find(%q) = %v; want ErrUnknownKit saying %q", tc.name, err, tc.says)
		}
	}
	// A named kit that does not verify says how to rebuild it.
	os.WriteFile(filepath.Join(cache, "kits", "mine2", "initrd"), []byte("X"), 0o644)
	if _, err := Find(cache, "mine2"); err == nil || !strings.Contains(err.Error(), "--kernel-suite trixie --name mine2 --force") {
		t.Errorf("tampered kit: %v", err)
	}

	got, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, e := range got {
		rows = append(rows, strings.Join([]string{e.Name, e.Arch, e.KernelRelease, e.Suite, boolStr(e.Default), boolStr(e.Verified)}, " "))
		if e.Size == 0 {
			t.Errorf("%s: size 0", e.Name)
		}
	}
	want := []string{
		"default amd64 6.1.0-57-amd64 bookworm yes yes",
		bpo + " amd64 6.12.95+deb12-amd64 bookworm-backports no yes",
		"mine amd64 6.12.117+deb13-amd64 trixie no yes",
		"mine2 amd64 6.12.118+deb13-amd64 trixie no no",
	}
	if diff := cmp.Diff(want, rows); diff != "" {
		t.Errorf("List (-want +got):\n%s", diff)
	}
	// The default kit's manifest names no suite: it stays as it was.
	if k, _ := Find(cache, ""); k.Manifest.Suite != "" || k.Manifest.Arch != "" {
		t.Errorf("default kit manifest: suite %q arch %q", k.Manifest.Suite, k.Manifest.Arch)
	}
}

func boolStr(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func TestValidNameAndSuite(t *testing.T) {
	for _, n := range []string{"bookworm-backports-6.12.95+deb12-amd64", "a", "x.y_z"} {
		if err := ValidName(n); err != nil {
			t.Errorf("ValidName(%q): %v", n, err)
		}
	}
	for _, n := range []string{"", DefaultName, "A", "-x", "a/b", "a..b", strings.Repeat("a", 81)} {
		if ValidName(n) == nil {
			t.Errorf("ValidName(%q) accepted", n)
		}
	}
	if s, err := LookupSuite(""); err != nil || s.Name != DefaultSuite {
		t.Errorf("LookupSuite(\"\") = %v, %v", s, err)
	}
	if _, err := LookupSuite("sid"); err == nil || !strings.Contains(err.Error(), "bookworm-backports") {
		t.Errorf("LookupSuite(sid): %v", err)
	}
	// bookworm's private sources list backports; trixie's its own suites.
	if s := privateSources("bookworm"); !strings.Contains(s, " bookworm-backports main") || !strings.Contains(s, " bookworm main") {
		t.Errorf("bookworm sources:\n%s", s)
	}
	if s := privateSources("trixie"); !strings.Contains(s, "debian-security trixie-security main") || strings.Contains(s, "bookworm") {
		t.Errorf("trixie sources:\n%s", s)
	}
}
