package qemu

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/gatevisor/gatevisor/internal/safefile"
)

// ErrNotRAM is returned for guest-physical addresses that no RAM region covers.
var ErrNotRAM = errors.New("guest-physical address is not RAM")

// CreateRAMFile creates the file that backs guest RAM in dir and unlinks it at
// once. QEMU opens it through /proc/self/fd/3 and the monitor maps it through
// the open descriptor, so no guest-RAM file can outlive both processes, after
// a crash or kill -9 included. dir should be on tmpfs (see RAMDir).
func CreateRAMFile(dir string, size int64) (*os.File, error) {
	f, err := os.CreateTemp(dir, "ram-*")
	if err != nil {
		return nil, fmt.Errorf("guest RAM file: %w", err)
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, fmt.Errorf("guest RAM file: unlink: %w", err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("guest RAM file: size %d: %w", size, err)
	}
	return f, nil
}

// RAMDir returns a directory on tmpfs for guest RAM: preferred when it is on
// tmpfs, else a private directory in /dev/shm. A disk-backed shared mapping
// would make the host write guest RAM back to disk.
func RAMDir(preferred string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(preferred, &st); err == nil && st.Type == unix.TMPFS_MAGIC {
		return preferred, nil
	}
	// /dev/shm is writable by everyone (sticky): another user could plant
	// this name first, as a link or a directory of theirs. safefile
	// refuses both.
	dir := filepath.Join("/dev/shm", fmt.Sprintf("gatevisor-%d", os.Geteuid()))
	if err := safefile.Dir(dir, 0o700); err != nil {
		return "", fmt.Errorf("guest RAM directory: %w", err)
	}
	return dir, nil
}

// Region maps Size bytes of guest-physical memory at GPA to the RAM file at
// Offset.
type Region struct {
	GPA    uint64 `json:"gpa"`
	Offset uint64 `json:"offset"`
	Size   uint64 `json:"size"`
}

// End is the first guest-physical address after r.
func (r Region) End() uint64 { return r.GPA + r.Size }

// maxMtreeLines bounds the HMP text ParseMtree reads.
const maxMtreeLines = 100_000

// ParseMtree extracts the guest-physical layout of memory backend backend
// from the output of HMP "info mtree": the alias regions (such as
// ram-below-4g and ram-above-4g on PC machines) that place slices of the
// backend in the address space, and the backend itself when it is mapped
// directly. Regions are deduplicated (the same alias appears under several
// address spaces) and sorted by GPA; overlapping regions are an error.
func ParseMtree(text, backend string) ([]Region, error) {
	seen := map[Region]bool{}
	var out []Region
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 4096), 64<<10)
	inSystem := false
	for n := 0; sc.Scan(); n++ {
		if n >= maxMtreeLines {
			return nil, fmt.Errorf("info mtree: more than %d lines", maxMtreeLines)
		}
		line := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(line, "address-space:") {
			inSystem = strings.TrimSpace(strings.TrimPrefix(line, "address-space:")) == "memory"
			continue
		}
		if strings.HasPrefix(line, "memory-region:") {
			inSystem = false
			continue
		}
		if !inSystem {
			continue
		}
		r, ok, err := parseMtreeLine(line, backend)
		if err != nil {
			return nil, err
		}
		if ok && !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("info mtree: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("info mtree: no RAM region of backend %q in the system address space", backend)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GPA < out[j].GPA })
	for i := 1; i < len(out); i++ {
		if out[i].GPA < out[i-1].End() {
			return nil, fmt.Errorf("info mtree: RAM regions overlap at %#x", out[i].GPA)
		}
	}
	return out, nil
}

// parseMtreeLine parses one line such as
//
//	0000000100000000-000000019fffffff (prio 0, ram): alias ram-above-4g @ram0 0000000080000000-000000011fffffff
//	0000000000000000-000000000fffffff (prio 0, ram): ram0
func parseMtreeLine(line, backend string) (Region, bool, error) {
	head, rest, ok := strings.Cut(line, " (prio ")
	if !ok {
		return Region{}, false, nil
	}
	attrs, tail, ok := strings.Cut(rest, "): ")
	if !ok || !strings.HasSuffix(attrs, ", ram") {
		return Region{}, false, nil
	}
	start, end, err := parseSpan(head)
	if err != nil {
		return Region{}, false, fmt.Errorf("info mtree: %q: %w", line, err)
	}
	f := strings.Fields(tail)
	switch {
	case len(f) >= 4 && f[0] == "alias" && f[2] == "@"+backend:
		ostart, oend, err := parseSpan(f[3])
		if err != nil {
			return Region{}, false, fmt.Errorf("info mtree: %q: %w", line, err)
		}
		if oend-ostart != end-start {
			return Region{}, false, fmt.Errorf("info mtree: %q: alias and target sizes differ", line)
		}
		return Region{GPA: start, Offset: ostart, Size: end - start + 1}, true, nil
	case len(f) >= 1 && f[0] == backend:
		return Region{GPA: start, Offset: 0, Size: end - start + 1}, true, nil
	}
	return Region{}, false, nil
}

func parseSpan(s string) (uint64, uint64, error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return 0, 0, fmt.Errorf("bad address span %q", s)
	}
	start, err := strconv.ParseUint(a, 16, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("bad address %q", a)
	}
	end, err := strconv.ParseUint(b, 16, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("bad address %q", b)
	}
	if end < start || end == ^uint64(0) {
		return 0, 0, fmt.Errorf("bad address span %q", s)
	}
	return start, end, nil
}

// GuestRAM is a live, shared mapping of guest RAM addressed by guest-physical
// address. Reads never pause the guest; they may observe a structure while
// the guest changes it, so callers validate what they read.
type GuestRAM struct {
	mem     []byte
	regions []Region // sorted by GPA, non-overlapping, each inside mem
}

// MapRAM maps f (size bytes) with the given layout.
func MapRAM(f *os.File, size int64, regions []Region) (*GuestRAM, error) {
	if size <= 0 {
		return nil, fmt.Errorf("map guest RAM: size %d", size)
	}
	for _, r := range regions {
		if r.Size == 0 || r.Offset+r.Size < r.Offset || r.Offset+r.Size > uint64(size) || r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("map guest RAM: region gpa %#x size %#x at file offset %#x lies outside the %d-byte backend", r.GPA, r.Size, r.Offset, size)
		}
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map guest RAM: %w", err)
	}
	return &GuestRAM{mem: mem, regions: append([]Region(nil), regions...)}, nil
}

// Close unmaps guest RAM. The GuestRAM must not be used afterwards.
func (g *GuestRAM) Close() error {
	if g.mem == nil {
		return nil
	}
	err := unix.Munmap(g.mem)
	g.mem = nil
	return err
}

// Regions returns the guest-physical layout.
func (g *GuestRAM) Regions() []Region { return append([]Region(nil), g.regions...) }

// Size is the total RAM size in bytes.
func (g *GuestRAM) Size() int { return len(g.mem) }

// find returns the region holding gpa.
func (g *GuestRAM) find(gpa uint64) (Region, bool) {
	if len(g.regions) <= 8 {
		// The usual layout is one or two regions (RAM split at the PCI
		// hole): a scan is cheaper than a binary search's closure, and
		// the IDS makes thousands of small reads per query.
		for _, r := range g.regions {
			if gpa >= r.GPA && gpa < r.End() {
				return r, true
			}
		}
		return Region{}, false
	}
	i := sort.Search(len(g.regions), func(i int) bool { return g.regions[i].End() > gpa })
	if i < len(g.regions) && g.regions[i].GPA <= gpa {
		return g.regions[i], true
	}
	return Region{}, false
}

// ReadAt copies guest-physical memory at gpa into p. A read that runs into a
// hole returns the bytes before it and an error wrapping ErrNotRAM.
func (g *GuestRAM) ReadAt(p []byte, gpa int64) (int, error) {
	return g.access(p, gpa, false)
}

// WriteAt copies p into guest-physical memory at gpa.
func (g *GuestRAM) WriteAt(p []byte, gpa int64) (int, error) {
	return g.access(p, gpa, true)
}

func (g *GuestRAM) access(p []byte, gpa int64, write bool) (n int, err error) {
	if gpa < 0 {
		return 0, fmt.Errorf("guest-physical address %#x: %w", gpa, ErrNotRAM)
	}
	// A compromised QEMU could shrink the file under the mapping; turn the
	// resulting SIGBUS into an error instead of a crash.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("guest RAM fault at %#x: %v", uint64(gpa)+uint64(n), r)
		}
	}()
	for n < len(p) {
		addr := uint64(gpa) + uint64(n)
		r, ok := g.find(addr)
		if !ok {
			return n, fmt.Errorf("guest-physical address %#x: %w", addr, ErrNotRAM)
		}
		off := r.Offset + (addr - r.GPA)
		chunk := r.End() - addr
		if rem := uint64(len(p) - n); chunk > rem {
			chunk = rem
		}
		if write {
			copy(g.mem[off:off+chunk], p[n:])
		} else {
			copy(p[n:], g.mem[off:off+chunk])
		}
		n += int(chunk)
	}
	return n, nil
}
