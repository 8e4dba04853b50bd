package cli

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
)

func buildInfo(tags string, settings ...string) *debug.BuildInfo {
	bi := &debug.BuildInfo{GoVersion: "go1.26.8", Path: "github.com/gatevisor/gatevisor/cmd/gatevisor",
		Main: debug.Module{Path: "github.com/gatevisor/gatevisor", Version: "(devel)"},
		Deps: []*debug.Module{{Path: "github.com/spf13/cobra", Version: "v1.9.1", Sum: "h1:a"}}}
	if tags != "" {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: "-tags", Value: tags})
	}
	for i := 0; i+1 < len(settings); i += 2 {
		bi.Settings = append(bi.Settings, debug.BuildSetting{Key: settings[i], Value: settings[i+1]})
	}
	return bi
}

const stamp = "-X github.com/gatevisor/gatevisor/internal/cli.sourceDigest=d1"

var dirty = []string{"GOARCH", "amd64", "vcs", "git", "vcs.revision", "0313f53", "vcs.time", "2026-12-06T18:00:00Z", "vcs.modified", "true"}

var clean = []string{"GOARCH", "amd64", "vcs", "git", "vcs.revision", "0313f53", "vcs.time", "2026-12-06T18:00:00Z", "vcs.modified", "false"}

func TestSameBuild(t *testing.T) {
	with := func(s []string, kv ...string) []string {
		out := append([]string(nil), s...)
		for i := 0; i+1 < len(kv); i += 2 {
			found := false
			for j := 0; j+1 < len(out); j += 2 {
				if out[j] == kv[i] {
					out[j+1], found = kv[i+1], true
				}
			}
			if !found {
				out = append(out, kv[i], kv[i+1])
			}
		}
		return out
	}
	self := buildInfo("", clean...)
	for _, c := range []struct {
		name   string
		self   *debug.BuildInfo
		mon    *debug.BuildInfo
		want   string // "" or a part of the reason
		digest string
	}{
		{"the monitor build of the same revision", self, buildInfo(monitorTag, clean...), "", ""},
		{"with gatevisor's own tags too", buildInfo("netgo", clean...), buildInfo("netgo,"+monitorTag, clean...), "", ""},
		{"the full build again", self, buildInfo("", clean...), "tags", ""},
		{"another revision", self, buildInfo(monitorTag, with(clean, "vcs.revision", "98c63fd")...), "vcs.revision", ""},
		{"a modified tree", buildInfo("", with(clean, "vcs.modified", "true")...), buildInfo(monitorTag, with(clean, "vcs.modified", "true")...), "modified", ""},
		{"the monitor from a modified tree", self, buildInfo(monitorTag, with(clean, "vcs.modified", "true")...), "modified", ""},
		{"no revision", buildInfo(""), buildInfo(monitorTag), "version-control revision", ""},
		{"other settings", self, buildInfo(monitorTag, with(clean, "-ldflags", "-s")...), "-ldflags", ""},
		{"another toolchain", self, func() *debug.BuildInfo { b := buildInfo(monitorTag, clean...); b.GoVersion = "go1.25.0"; return b }(), "go1.25.0", ""},
		{"another dependency version", self, func() *debug.BuildInfo {
			b := buildInfo(monitorTag, clean...)
			b.Deps = []*debug.Module{{Path: "github.com/spf13/cobra", Version: "v1.9.0", Sum: "h1:b"}}
			return b
		}(), "cobra@v1.9.0", ""},
		{"fewer dependencies", func() *debug.BuildInfo {
			b := buildInfo("", clean...)
			b.Deps = append(b.Deps, &debug.Module{Path: "github.com/nats-io/nats-server/v2", Version: "v2.11.0", Sum: "h1:c"})
			return b
		}(), buildInfo(monitorTag, clean...), "", ""},
		{"the monitor without cgo", buildInfo("", with(clean, "CGO_ENABLED", "1", "CGO_CFLAGS", "")...), buildInfo(monitorTag, with(clean, "CGO_ENABLED", "0")...), "", ""},
		{"stamped, from a modified tree", buildInfo("", with(dirty, "-ldflags", stamp)...), buildInfo(monitorTag, with(dirty, "-ldflags", stamp)...), "", "d1"},
		{"stamped, no revision", buildInfo("", "-ldflags", stamp), buildInfo(monitorTag, "-ldflags", stamp), "", "d1"},
		{"another stamp", buildInfo("", with(dirty, "-ldflags", stamp)...), buildInfo(monitorTag, with(dirty, "-ldflags", stamp+"x")...), "-ldflags", "d1"},
		{"the monitor unstamped", buildInfo("", with(dirty, "-ldflags", stamp)...), buildInfo(monitorTag, dirty...), "-ldflags", "d1"},
	} {
		got := sameBuild(c.self, c.mon, c.digest)
		if c.want == "" && got != "" || c.want != "" && !strings.Contains(got, c.want) {
			t.Errorf("%s: sameBuild = %q, want %q", c.name, got, c.want)
		}
	}
}

func TestOpenMonitorExe(t *testing.T) {
	dir := t.TempDir()
	if f, why := openMonitorExe(filepath.Join(dir, monitorExeName)); f != nil || why != "" {
		t.Errorf("none there: %v, %q", f, why)
	}
	// A Go executable without a revision: this test binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "exe")
	if err := os.WriteFile(exe, data, 0o755); err != nil {
		t.Fatal(err)
	}
	text := filepath.Join(dir, "text")
	if err := os.WriteFile(text, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, data[:4096], 0o644); err != nil {
		t.Fatal(err)
	}
	shared := filepath.Join(dir, "shared")
	if err := os.WriteFile(shared, data[:4096], 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(shared, 0o777); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		exe:    "revision",
		text:   "no Go build information",
		plain:  "not executable",
		shared: "writable by others",
		dir:    "not a regular file",
	} {
		f, why := openMonitorExe(path)
		if f != nil {
			f.Close()
			t.Errorf("%s: taken", path)
		}
		if !strings.Contains(why, want) {
			t.Errorf("%s: %q, want %q", path, why, want)
		}
	}
}
