// Package kmod reads what the kit needs to know about Linux kernel modules:
// each module's own ELF .modinfo section (name, depends=), compressed modules
// (.ko.xz, .ko.zst, .ko.gz), modules.builtin, the kernel config, and a load
// order computed from the dependencies. Modules come from downloaded
// packages: every length is bounded and malformed input is an error, never a
// panic. Parsing is pure.
package kmod

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Limits on module metadata.
const (
	MaxModinfo = 1 << 20  // bytes of one .modinfo section
	MaxDepends = 256      // entries in one depends= list
	MaxModule  = 64 << 20 // bytes of one decompressed module
)

// ErrNotModule is wrapped by errors about files that are not kernel modules.
var ErrNotModule = errors.New("not a kernel module")

// Info is a module's metadata from its .modinfo section.
type Info struct {
	Name     string   // name= (normalized: '-' becomes '_')
	Depends  []string // depends=, normalized, in the order listed
	Vermagic string   // vermagic=
	License  string   // license=
}

// Normalize returns the canonical form of a module name: the kernel treats
// '-' and '_' in module names as the same character.
func Normalize(name string) string { return strings.ReplaceAll(name, "-", "_") }

// NameFromPath returns the module name of a file such as
// "kernel/fs/9p/9p.ko.xz" ("9p"), and whether the name looks like a module.
func NameFromPath(p string) (string, bool) {
	base := path.Base(p)
	for _, ext := range []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"} {
		if strings.HasSuffix(base, ext) && len(base) > len(ext) {
			return Normalize(strings.TrimSuffix(base, ext)), true
		}
	}
	return "", false
}

// Decompress returns the ELF image of a module file named name, whose
// content is data, decompressing it by its suffix; at most max bytes.
func Decompress(name string, data []byte, max int64) ([]byte, error) {
	var r io.Reader
	switch {
	case strings.HasSuffix(name, ".ko"):
		if int64(len(data)) > max {
			return nil, fmt.Errorf("kmod: %s: %d bytes, more than the limit %d", name, len(data), max)
		}
		return data, nil
	case strings.HasSuffix(name, ".ko.xz"):
		xr, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: xz: %w", name, err)
		}
		r = xr
	case strings.HasSuffix(name, ".ko.zst"):
		zr, err := zstd.NewReader(bytes.NewReader(data), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(max)), zstd.WithDecoderMaxWindow(32<<20))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: zstd: %w", name, err)
		}
		defer zr.Close()
		r = zr
	case strings.HasSuffix(name, ".ko.gz"):
		gr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			return nil, fmt.Errorf("kmod: %s: gzip: %w", name, err)
		}
		r = gr
	default:
		return nil, fmt.Errorf("kmod: %s: %w: unknown suffix", name, ErrNotModule)
	}
	out, err := io.ReadAll(io.LimitReader(r, max+1))
	if err != nil {
		return nil, fmt.Errorf("kmod: %s: decompress: %w", name, err)
	}
	if int64(len(out)) > max {
		return nil, fmt.Errorf("kmod: %s: decompresses to more than %d bytes", name, max)
	}
	return out, nil
}

// ReadModinfo parses the .modinfo section of the ELF module image ko.
func ReadModinfo(ko []byte) (Info, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return Info{}, fmt.Errorf("kmod: %w: %v", ErrNotModule, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return Info{}, fmt.Errorf("kmod: %w: no .modinfo section", ErrNotModule)
	}
	if s.Type == elf.SHT_NOBITS || s.Size > MaxModinfo {
		return Info{}, fmt.Errorf("kmod: %w: .modinfo section of %d bytes", ErrNotModule, s.Size)
	}
	data, err := s.Data()
	if err != nil {
		return Info{}, fmt.Errorf("kmod: %w: reading .modinfo: %v", ErrNotModule, err)
	}
	return ParseModinfo(data)
}

// ParseModinfo parses the content of a .modinfo section: NUL-separated
// key=value strings.
func ParseModinfo(data []byte) (Info, error) {
	if len(data) > MaxModinfo {
		return Info{}, fmt.Errorf("kmod: .modinfo of %d bytes exceeds %d", len(data), MaxModinfo)
	}
	var info Info
	sawDepends := false
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := bytes.Cut(kv, []byte("="))
		if !ok {
			continue
		}
		switch string(k) {
		case "name":
			info.Name = Normalize(string(v))
		case "vermagic":
			info.Vermagic = string(v)
		case "license":
			info.License = string(v)
		case "depends":
			if sawDepends {
				return Info{}, errors.New("kmod: .modinfo has two depends= entries")
			}
			sawDepends = true
			for _, d := range strings.Split(string(v), ",") {
				d = strings.TrimSpace(d)
				if d == "" {
					continue
				}
				if !validName(d) {
					return Info{}, fmt.Errorf("kmod: bad module name %q in depends=", trunc(d, 40))
				}
				if len(info.Depends) >= MaxDepends {
					return Info{}, fmt.Errorf("kmod: more than %d dependencies", MaxDepends)
				}
				info.Depends = append(info.Depends, Normalize(d))
			}
		}
	}
	if info.Name != "" && !validName(info.Name) {
		return Info{}, fmt.Errorf("kmod: bad module name %q", trunc(info.Name, 40))
	}
	return info, nil
}

func validName(n string) bool {
	if n == "" || len(n) > 64 {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// ParseBuiltin parses modules.builtin (one "kernel/.../name.ko" per line)
// into a set of normalized module names.
func ParseBuiltin(data []byte) map[string]bool {
	set := map[string]bool{}
	for _, line := range strings.Split(string(data), "\n") {
		if n, ok := NameFromPath(strings.TrimSpace(line)); ok {
			set[n] = true
		}
	}
	return set
}

// ParseConfig parses a kernel .config: CONFIG_X=value lines, and
// "# CONFIG_X is not set" as "n". Values keep their quotes.
func ParseConfig(data []byte) map[string]string {
	cfg := map[string]string{}
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "# "); ok {
			if name, ok := strings.CutSuffix(rest, " is not set"); ok && strings.HasPrefix(name, "CONFIG_") {
				cfg[name] = "n"
			}
			continue
		}
		if k, v, ok := strings.Cut(line, "="); ok && strings.HasPrefix(k, "CONFIG_") {
			cfg[k] = v
		}
	}
	return cfg
}

// ErrCycle is wrapped by Order's error when dependencies form a cycle.
var ErrCycle = errors.New("dependency cycle")

// ErrMissing is wrapped by Order's error when a needed module is unknown.
var ErrMissing = errors.New("module not found")

// Order returns the modules to load, dependencies first, so that every module
// comes after all modules it depends on. deps maps each known module to its
// depends= list; modules in builtin are part of the kernel image and are
// left out (with their dependencies, which are builtin too). The result is
// deterministic: roots in the given order, dependencies in listed order.
func Order(roots []string, deps map[string][]string, builtin map[string]bool) ([]string, error) {
	const (
		unvisited = iota
		visiting
		done
	)
	state := map[string]int{}
	var order []string
	var stack []string
	var visit func(m string) error
	visit = func(m string) error {
		m = Normalize(m)
		if builtin[m] {
			return nil
		}
		switch state[m] {
		case done:
			return nil
		case visiting:
			i := 0
			for i < len(stack) && stack[i] != m {
				i++
			}
			cycle := append(append([]string{}, stack[i:]...), m)
			return fmt.Errorf("kmod: %w: %s", ErrCycle, strings.Join(cycle, " -> "))
		}
		d, ok := deps[m]
		if !ok {
			if len(stack) > 0 {
				return fmt.Errorf("kmod: %w: %s (needed by %s)", ErrMissing, m, stack[len(stack)-1])
			}
			return fmt.Errorf("kmod: %w: %s", ErrMissing, m)
		}
		if len(stack) > len(deps) {
			return fmt.Errorf("kmod: dependency chain longer than %d modules", len(deps))
		}
		state[m] = visiting
		stack = append(stack, m)
		for _, dep := range d {
			if err := visit(dep); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[m] = done
		order = append(order, m)
		return nil
	}
	for _, r := range roots {
		if err := visit(r); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// Closure returns the names reachable from roots through deps (roots
// included, builtin modules excluded), sorted; unknown names are skipped.
// It tolerates cycles. Callers use it to decide which module files to keep
// before the full dependency information is known.
func Closure(roots []string, deps map[string][]string, builtin map[string]bool) []string {
	seen := map[string]bool{}
	work := append([]string{}, roots...)
	for len(work) > 0 {
		m := Normalize(work[len(work)-1])
		work = work[:len(work)-1]
		if seen[m] || builtin[m] {
			continue
		}
		seen[m] = true
		work = append(work, deps[m]...)
	}
	out := make([]string, 0, len(seen))
	for m := range seen {
		out = append(out, m)
	}
	sort.Strings(out)
	return out
}
