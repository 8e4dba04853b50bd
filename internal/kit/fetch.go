package kit

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// debFile is a package as apt resolved it, and where it lies in the cache.
type debFile struct {
	Spec     string // what was asked for: "name" or "name=version"
	Filename string // as apt names it, e.g. busybox-static_1%3a1.35.0-4_amd64.deb
	Path     string // in <cache>/debs
	Size     int64
	SHA256   string
}

// fetcher downloads packages into a directory with apt-get.
type fetcher struct {
	aptGet  string
	dir     string
	opts    *Options
	private []string // apt options selecting the private configuration; nil: the host's
	source  string   // "host" or "private", for the manifest
	release string   // APT::Default-Release: the suite preferred; "" for the default kit
	arch    string   // APT::Architecture for the host's apt: another architecture's packages; "" for the host's
}

func newFetcher(dir string, opts *Options) (*fetcher, error) {
	apt, err := exec.LookPath("apt-get")
	if err != nil {
		return nil, ErrNoApt
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("kit: create %s: %w", dir, err)
	}
	return &fetcher{aptGet: apt, dir: dir, opts: opts, source: "host"}, nil
}

// aptArgs are options common to every apt-get call. As root, apt would
// drop privileges to _apt, which cannot write into root's cache directory
// and makes apt warn; downloads are verified against the archive's signed
// hashes either way.
func (f *fetcher) aptArgs(args ...string) []string {
	base := []string{"-q"}
	if os.Geteuid() == 0 {
		base = append(base, "-o", "APT::Sandbox::User=root")
	}
	base = append(base, f.private...)
	if f.arch != "" && f.private == nil {
		base = append(base, "-o", "APT::Architecture="+f.arch)
	}
	if f.release != "" {
		base = append(base, "-o", "APT::Default-Release="+f.release)
	}
	return append(base, args...)
}

var printURILine = regexp.MustCompile(`^'([^']+)' (\S+\.deb) ([0-9]+) SHA256:([0-9a-f]{64})$`)

// resolve asks apt which file provides spec, without downloading it. apt
// prints nothing for a file already present in its working directory, so it
// runs in an empty one.
func (f *fetcher) resolve(ctx context.Context, spec string) (debFile, error) {
	empty, err := os.MkdirTemp(f.dir, ".resolve-")
	if err != nil {
		return debFile{}, fmt.Errorf("kit: %w", err)
	}
	defer os.RemoveAll(empty)
	cmd := exec.CommandContext(ctx, f.aptGet, f.aptArgs("download", "--print-uris", spec)...)
	cmd.Dir = empty
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return debFile{}, aptError("resolve "+spec, err, stderr.String())
	}
	for _, line := range strings.Split(string(out), "\n") {
		m := printURILine.FindStringSubmatch(strings.TrimSpace(line))
		if m == nil {
			continue
		}
		if filepath.Base(m[2]) != m[2] || strings.HasPrefix(m[2], ".") {
			return debFile{}, fmt.Errorf("kit: apt named a bad file %q for %s", m[2], spec)
		}
		size, err := strconv.ParseInt(m[3], 10, 64)
		if err != nil {
			return debFile{}, fmt.Errorf("kit: apt gave a bad size for %s: %w", spec, err)
		}
		return debFile{Spec: spec, Filename: m[2], Path: filepath.Join(f.dir, m[2]), Size: size, SHA256: m[4]}, nil
	}
	return debFile{}, fmt.Errorf("kit: apt-get download --print-uris %s printed no package (output %q)", spec, trunc(string(out), 200))
}

func aptError(what string, err error, stderr string) error {
	msg := strings.TrimSpace(stderr)
	var lines []string
	for _, l := range strings.Split(msg, "\n") {
		if strings.HasPrefix(l, "E:") {
			lines = append(lines, strings.TrimSpace(strings.TrimPrefix(l, "E:")))
		}
	}
	if len(lines) > 0 {
		msg = strings.Join(lines, "; ")
	}
	hint := ""
	if strings.Contains(msg, "Unable to locate package") || strings.Contains(msg, "candidate") || strings.Contains(msg, "has no installation candidate") {
		hint = " (the package lists may be missing or stale: run 'sudo apt-get update'; the default kit needs Debian bookworm packages)"
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("kit: apt-get %s: %w", what, err)
	}
	return fmt.Errorf("kit: apt-get %s: %v: %s%s", what, err, trunc(msg, 400), hint)
}

// fetch makes sure d is in the cache with the right checksum, downloading it
// with apt-get when it is missing or damaged.
func (f *fetcher) fetch(ctx context.Context, d debFile) error {
	if sum, size, err := sha256File(d.Path); err == nil && sum == d.SHA256 && size == d.Size {
		f.opts.progressf("kit: using cached %s", d.Filename)
		return nil
	}
	os.Remove(d.Path)
	f.opts.progressf("kit: downloading %s (%s)", d.Filename, humanBytes(d.Size))
	pr, pw, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("kit: pipe: %w", err)
	}
	defer pr.Close()
	cmd := exec.CommandContext(ctx, f.aptGet, f.aptArgs("-o", "APT::Status-Fd=3", "download", d.Spec)...)
	cmd.Dir = f.dir
	cmd.ExtraFiles = []*os.File{pw} // fd 3
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = nil
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("kit: start apt-get: %w", err)
	}
	pw.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.showProgress(pr, d)
	}()
	err = cmd.Wait()
	<-done
	if err != nil {
		return aptError("download "+d.Spec, err, stderr.String())
	}
	sum, size, err := sha256File(d.Path)
	if err != nil {
		return fmt.Errorf("kit: apt-get download %s left no %s: %w", d.Spec, d.Filename, err)
	}
	if sum != d.SHA256 || size != d.Size {
		os.Remove(d.Path)
		return fmt.Errorf("kit: downloaded %s has sha256 %s, apt announced %s", d.Filename, sum, d.SHA256)
	}
	return nil
}

// showProgress turns apt's "dlstatus:N:PERCENT:TEXT" status lines into
// progress messages, at most one per 10 percent or per two seconds.
func (f *fetcher) showProgress(r *os.File, d debFile) {
	sc := bufio.NewScanner(r)
	last, lastT := -100.0, time.Time{}
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 4)
		if len(parts) < 3 || parts[0] != "dlstatus" {
			continue
		}
		pct, err := strconv.ParseFloat(parts[2], 64)
		if err != nil || pct < 0 || pct > 100 {
			continue
		}
		if pct-last >= 10 || (pct > last && time.Since(lastT) >= 2*time.Second) {
			f.opts.progressf("kit:   %s %3.0f%% of %s", d.Filename, pct, humanBytes(d.Size))
			last, lastT = pct, time.Now()
		}
	}
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
