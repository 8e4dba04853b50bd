package monitor

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cavaliergopher/cpio"

	"github.com/gatevisor/gatevisor/internal/api"
	"github.com/gatevisor/gatevisor/internal/event"
	"github.com/gatevisor/gatevisor/internal/policy"
)

func TestParseFileShare(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "f")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		in   string
		want FileShare
	}{
		{"conf=" + dir, FileShare{Name: "conf", HostDir: dir, GuestPath: "/mnt/conf", Transport: TransportVirtioFS}},
		{"conf=" + dir + ",ro", FileShare{Name: "conf", HostDir: dir, GuestPath: "/mnt/conf", ReadOnly: true, Transport: TransportVirtioFS}},
		{"c-1=" + dir + ":/srv/plans", FileShare{Name: "c-1", HostDir: dir, GuestPath: "/srv/plans", Transport: TransportVirtioFS}},
		{"c=" + dir + ":/srv/plans,ro", FileShare{Name: "c", HostDir: dir, GuestPath: "/srv/plans", ReadOnly: true, Transport: TransportVirtioFS}},
		{"c=" + dir + ",9p", FileShare{Name: "c", HostDir: dir, GuestPath: "/mnt/c", Transport: Transport9P}},
		{"c=" + dir + ":/srv/plans,ro,9p", FileShare{Name: "c", HostDir: dir, GuestPath: "/srv/plans", ReadOnly: true, Transport: Transport9P}},
		{"c=" + dir + ",9p,ro", FileShare{Name: "c", HostDir: dir, GuestPath: "/mnt/c", ReadOnly: true, Transport: Transport9P}},
	} {
		got, err := ParseFileShare(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseFileShare(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		"", "conf", "conf=", "Conf=" + dir, "conf=" + file, "conf=" + dir + "/nope",
		"conf=" + dir + ":/srv/../etc", "conf=" + dir + ":/srv/a b", "conf=" + dir + ":/", "conf=" + dir + ":/x/",
	} {
		if fs, err := ParseFileShare(bad); err == nil {
			t.Errorf("ParseFileShare(%q) = %+v, want an error", bad, fs)
		}
	}
}

func TestGrantCovering(t *testing.T) {
	now := time.Now()
	g := grantTable{grants: map[string]*grant{
		"alice": {AuthGrant: api.AuthGrant{User: "alice", Expires: now.Add(time.Minute)}},
		"bob":   {AuthGrant: api.AuthGrant{User: "bob", UIDs: []uint32{1000}, Programs: []string{"/usr/bin/viewer"}, Expires: now.Add(time.Minute)}},
		"carol": {AuthGrant: api.AuthGrant{User: "carol", Expires: now.Add(-time.Second)}},
	}}
	for _, tc := range []struct {
		s    event.Subject
		want []string
	}{
		{event.Subject{UID: 1000, Exe: "/usr/bin/viewer"}, []string{"alice", "bob"}},
		{event.Subject{UID: 1000, Exe: "/bin/cat"}, []string{"alice"}},
		{event.Subject{UID: 1001, Exe: "/usr/bin/viewer"}, []string{"alice"}},
	} {
		if got := g.covering(&tc.s, now); !slices.Equal(got, tc.want) {
			t.Errorf("covering(%+v) = %v, want %v (carol's grant has expired)", tc.s, got, tc.want)
		}
	}
	if got := g.covering(&event.Subject{UID: 1000}, now.Add(2*time.Minute)); len(got) != 0 {
		t.Errorf("after expiry: %v", got)
	}
}

func TestFileGateCoverage(t *testing.T) {
	base := policy.Coverage{Observers: map[event.Class]policy.Observer{
		event.ClassFile: {Gate: "the kernel gate", All: true, Ops: []string{"open", "read", "write"}},
	}, Absent: map[event.Class]string{}}
	cov := FileGateCoverage(base)
	o := cov.Observers[event.ClassFile]
	if !cov.FileGate || !slices.Contains(o.Ops, "readdir") || !slices.IsSorted(o.Ops) || !o.All {
		t.Fatalf("coverage with the file gate: %+v", cov)
	}
	none := FileGateCoverage(policy.Coverage{Observers: map[event.Class]policy.Observer{},
		Absent: map[event.Class]string{event.ClassFile: "no hooks"}})
	if o := none.Observers[event.ClassFile]; o.All || !slices.Contains(o.Ops, "read") || none.Absent[event.ClassFile] != "" {
		t.Fatalf("coverage with only the file gate: %+v", none)
	}
}

// TestCheckKitVirtioFS: a kit whose mount script predates virtio-fs is
// refused for a virtio-fs share, with what to do; the current one is
// taken.
func TestCheckKitVirtioFS(t *testing.T) {
	write := func(script string) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "initrd")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		w := cpio.NewWriter(f)
		for name, body := range map[string]string{"sbin/gatevisor-mount-files": script, "etc/x": "y"} {
			if err := w.WriteHeader(&cpio.Header{Name: name, Mode: 0o755, Size: int64(len(body))}); err != nil {
				t.Fatal(err)
			}
			if _, err := w.Write([]byte(body)); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		f.Close()
		return p
	}
	if err := checkKitVirtioFS(write("#!/bin/sh\ncase \"$a\" in gatevisor.files=*) ;; esac\n")); err == nil || !strings.Contains(err.Error(), "kit build --force") || !strings.Contains(err.Error(), ",9p") {
		t.Fatalf("an old kit: %v", err)
	}
	if err := checkKitVirtioFS(write("#!/bin/sh\ncase \"$a\" in gatevisor.virtiofs=*) ;; esac\n")); err != nil {
		t.Fatalf("a current kit: %v", err)
	}
	if err := checkKitVirtioFS(""); err == nil {
		t.Fatal("no initramfs accepted")
	}
}
