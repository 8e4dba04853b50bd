package linux

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"math"
	"sort"
	"strings"
)

// The kernel keeps its symbol table in .rodata as compressed kallsyms tables
// (scripts/kallsyms.c writes them, kernel/kallsyms.c reads them):
//
//	kallsyms_num_syms     count N
//	kallsyms_names        N entries: a length (1 byte, or 2 as ULEB128 from
//	                      6.1 on) then that many token indexes; the expanded
//	                      text is the type letter followed by the name
//	kallsyms_markers      offset in kallsyms_names of every 256th entry
//	kallsyms_token_table  256 NUL-terminated tokens
//	kallsyms_token_index  256 uint16 offsets of the tokens in the table
//	kallsyms_offsets      N int32, with kallsyms_relative_base (u64), when
//	                      CONFIG_KALLSYMS_BASE_RELATIVE; else
//	                      kallsyms_addresses, N u64
//
// Up to 6.3 the address tables come first (offsets, relative base, num_syms,
// names, markers, [6.2-6.3: seqs_of_names], token table, token index); from
// 6.4 they come after the token index. There are no symbols pointing at any
// of them in a stripped image, so they are found by content: the token table
// holds the single-character tokens "0".."9" in slots 0x30-0x39, the token
// index must describe the table exactly, the markers must match the names,
// and the decoded addresses must be sorted.

// Symbol is one kallsyms entry.
type Symbol struct {
	Name string
	// Addr is the link-time address (before any KASLR slide).
	Addr uint64
	// Type is nm's type letter: 'T' text, 'D' data, 'R' read-only, 'B' bss...
	Type byte
}

// KallsymsLayout tells where the tables were found (offsets into the image)
// and how addresses are encoded.
type KallsymsLayout struct {
	NumSyms, Names, Markers, TokenTable, TokenIndex, Addresses int
	// BaseRelative is CONFIG_KALLSYMS_BASE_RELATIVE: int32 offsets from
	// RelativeBase instead of absolute addresses.
	BaseRelative bool
	// AbsolutePercpu is CONFIG_KALLSYMS_ABSOLUTE_PERCPU: non-negative offsets
	// are absolute values (per-CPU symbols), negative ones relative.
	AbsolutePercpu bool
	RelativeBase   uint64
	// MarkerSize is 4, or 8 on old kernels whose markers were longs.
	MarkerSize int
}

// Kallsyms is a kernel's symbol table decoded from its kallsyms tables.
type Kallsyms struct {
	Layout KallsymsLayout
	// The symbols, sorted by address as the kernel keeps them, in columns:
	// symbol i is named names[nameEnd[i-1]:nameEnd[i]]. One string and
	// three arrays instead of a string and a map entry per symbol: a
	// distribution kernel has ~150,000 symbols, and the monitor keeps
	// them for its life.
	addrs   []uint64
	types   []byte
	nameEnd []uint32
	names   string
	// byName holds symbol indices sorted by name, then index: Lookup's
	// binary search finds a name's first symbol.
	byName []int32
}

// newKallsyms builds the table from parallel columns (sorted by address).
func newKallsyms(layout KallsymsLayout, names []string, addrs []uint64, types []byte) (*Kallsyms, error) {
	if len(names) != len(addrs) || len(names) != len(types) || len(names) > maxSyms {
		return nil, fmt.Errorf("%w: %d names, %d addresses, %d types", ErrNoKallsyms, len(names), len(addrs), len(types))
	}
	k := &Kallsyms{Layout: layout, addrs: addrs, types: types, nameEnd: make([]uint32, len(names)), byName: make([]int32, len(names))}
	var b strings.Builder
	for i, n := range names {
		b.WriteString(n)
		if b.Len() > math.MaxUint32 {
			return nil, fmt.Errorf("%w: symbol names over 4 GiB", ErrNoKallsyms)
		}
		k.nameEnd[i] = uint32(b.Len())
		k.byName[i] = int32(i)
	}
	k.names = b.String()
	sort.Slice(k.byName, func(a, c int) bool {
		na, nc := k.name(int(k.byName[a])), k.name(int(k.byName[c]))
		if na != nc {
			return na < nc
		}
		return k.byName[a] < k.byName[c]
	})
	return k, nil
}

// name is symbol i's name.
func (k *Kallsyms) name(i int) string {
	lo := uint32(0)
	if i > 0 {
		lo = k.nameEnd[i-1]
	}
	return k.names[lo:k.nameEnd[i]]
}

// sym is symbol i.
func (k *Kallsyms) sym(i int) Symbol {
	return Symbol{Name: k.name(i), Addr: k.addrs[i], Type: k.types[i]}
}

// ErrNoKallsyms means no consistent kallsyms tables were found.
var ErrNoKallsyms = errors.New("linux: kallsyms tables not found")

// Bounds on what a real kernel has.
const (
	maxSyms       = 4 << 20
	minSyms       = 256
	maxTokenLen   = 256
	maxSymNameLen = 1024 // KSYM_NAME_LEN is 512 from 6.1 on
	maxEntryLen   = 0x3fff
	maxCandidates = 64
	namesWindow   = 64 << 20 // how far before the token table to look for the names
)

// ParseKallsyms finds and decodes the kallsyms tables in a decompressed
// kernel image (an ELF vmlinux or a raw image).
func ParseKallsyms(img []byte) (*Kallsyms, error) {
	digits := []byte("0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00")
	var lastErr error = ErrNoKallsyms
	from := 0
	for tries := 0; tries < maxCandidates; tries++ {
		i := bytes.Index(img[from:], digits)
		if i < 0 {
			break
		}
		d := from + i
		from = d + 1
		tt, tokens, err := tokenTableAt(img, d)
		if err != nil {
			lastErr = err
			continue
		}
		k, err := parseWithTokens(img, tt, tokens)
		if err != nil {
			lastErr = err
			continue
		}
		return k, nil
	}
	return nil, lastErr
}

// tokenTableAt checks for a token table whose token 0x30 ("0") is at d and
// returns the table's offset, its tokens, and the token index's end.
func tokenTableAt(img []byte, d int) (tokenTable tokenTableInfo, tokens []string, err error) {
	// Walk back 0x30 tokens: each is non-empty and NUL-terminated.
	start := d
	for i := 0; i < 0x30; i++ {
		if start < 2 || img[start-1] != 0 || img[start-2] == 0 {
			return tokenTable, nil, fmt.Errorf("%w: no token table before %#x", ErrNoKallsyms, d)
		}
		j := start - 2
		for j > 0 && img[j-1] != 0 && start-j <= maxTokenLen {
			j--
		}
		if start-j > maxTokenLen || j == 0 {
			return tokenTable, nil, fmt.Errorf("%w: token too long before %#x", ErrNoKallsyms, d)
		}
		start = j
	}
	if tt, toks, err := tokensFrom(img, start, d); err == nil {
		return tt, toks, nil
	}
	// Token 0's start is not where the walk back put it when the table
	// before it ends in no NUL byte: from 6.2 (and in 6.1 stable kernels
	// that took the change) kallsyms_seqs_of_names, 3-byte entries, ends
	// right where the 8-byte aligned token table starts. The token index
	// says how long token 0 is: find it after tokens 1-255.
	return tokensAfterFirst(img, d)
}

// tokensFrom reads 256 tokens from start, whose token 0x30 must be at d,
// and finds the token index after them.
func tokensFrom(img []byte, start, d int) (tokenTable tokenTableInfo, tokens []string, err error) {
	offs := make([]int, 256)
	tokens = make([]string, 256)
	p := start
	for i := 0; i < 256; i++ {
		offs[i] = p - start
		end := bytes.IndexByte(img[p:min(len(img), p+maxTokenLen+1)], 0)
		if end <= 0 {
			return tokenTable, nil, fmt.Errorf("%w: bad token %d at %#x", ErrNoKallsyms, i, p)
		}
		tokens[i] = string(img[p : p+end])
		p += end + 1
	}
	if offs[0x30] != d-start {
		return tokenTable, nil, fmt.Errorf("%w: token 0x30 misplaced", ErrNoKallsyms)
	}
	// The token index follows, aligned to at most 8 bytes.
	le := binary.LittleEndian
	for ti := p; ti < p+8 && ti+512 <= len(img); ti++ {
		ok := true
		for i := 0; i < 256 && ok; i++ {
			ok = int(le.Uint16(img[ti+2*i:])) == offs[i]
		}
		if ok {
			return tokenTableInfo{table: start, index: ti}, tokens, nil
		}
	}
	return tokenTable, nil, fmt.Errorf("%w: no token index after token table at %#x", ErrNoKallsyms, start)
}

// tokensAfterFirst finds a token table whose token 0x30 is at d from its
// tokens 1 to 255 and its index, which gives token 0's length.
func tokensAfterFirst(img []byte, d int) (tokenTable tokenTableInfo, tokens []string, err error) {
	s1 := d
	for i := 1; i < 0x30; i++ {
		if s1 < 2 || img[s1-1] != 0 || img[s1-2] == 0 {
			return tokenTable, nil, fmt.Errorf("%w: no token table before %#x", ErrNoKallsyms, d)
		}
		j := s1 - 2
		for j > 0 && img[j-1] != 0 && s1-j <= maxTokenLen {
			j--
		}
		if s1-j > maxTokenLen || j == 0 {
			return tokenTable, nil, fmt.Errorf("%w: token too long before %#x", ErrNoKallsyms, d)
		}
		s1 = j
	}
	rel := make([]int, 256) // token i's offset from token 1
	p := s1
	for i := 1; i < 256; i++ {
		rel[i] = p - s1
		end := bytes.IndexByte(img[p:min(len(img), p+maxTokenLen+1)], 0)
		if end <= 0 {
			return tokenTable, nil, fmt.Errorf("%w: bad token %d at %#x", ErrNoKallsyms, i, p)
		}
		p += end + 1
	}
	le := binary.LittleEndian
	for ti := p; ti < p+8 && ti+512 <= len(img); ti++ {
		first := int(le.Uint16(img[ti+2:])) // token 0's length plus its NUL
		if le.Uint16(img[ti:]) != 0 || first < 2 || first > maxTokenLen+1 || s1-first < 0 {
			continue
		}
		ok := true
		for i := 1; i < 256 && ok; i++ {
			ok = int(le.Uint16(img[ti+2*i:])) == first+rel[i]
		}
		if !ok {
			continue
		}
		start := s1 - first
		if tt, toks, err := tokensFrom(img, start, d); err == nil && bytes.IndexByte(img[start:s1-1], 0) < 0 {
			return tt, toks, nil
		}
	}
	return tokenTable, nil, fmt.Errorf("%w: no token index after token table before %#x", ErrNoKallsyms, d)
}

type tokenTableInfo struct{ table, index int }

// namesInfo is a verified kallsyms_names table.
type namesInfo struct {
	numSyms, names, markers, markerSize, n int
}

func parseWithTokens(img []byte, tt tokenTableInfo, tokens []string) (*Kallsyms, error) {
	ni, err := findNames(img, tt.table)
	if err != nil {
		return nil, err
	}
	k := &Kallsyms{Layout: KallsymsLayout{
		NumSyms: ni.numSyms, Names: ni.names, Markers: ni.markers, MarkerSize: ni.markerSize,
		TokenTable: tt.table, TokenIndex: tt.index,
	}}
	names, types, err := decodeNames(img[ni.names:], ni.n, tokens)
	if err != nil {
		return nil, err
	}
	addrs, err := findAddresses(img, ni, tt.index+512, &k.Layout)
	if err != nil {
		return nil, err
	}
	return newKallsyms(k.Layout, names, addrs, types)
}

// entryLen reads a kallsyms_names entry's length at b[0:]: one byte, or a
// two-byte ULEB128 when the first byte has its top bit set (6.1+).
func entryLen(b []byte) (n, hdr int, ok bool) {
	if len(b) == 0 {
		return 0, 0, false
	}
	if b[0]&0x80 == 0 {
		return int(b[0]), 1, b[0] != 0
	}
	if len(b) < 2 || b[1]&0x80 != 0 {
		return 0, 0, false
	}
	return int(b[0]&0x7f) | int(b[1])<<7, 2, true
}

// skipEntries walks count entries from off in names and returns the offset
// after them, checking every 256th against markers (marker i for entry
// first+256*i... when first%256 == 0).
func skipEntries(img []byte, off, end, count int) (int, bool) {
	for i := 0; i < count; i++ {
		n, h, ok := entryLen(img[off:end])
		if !ok || n > maxEntryLen || end-off < h+n {
			return 0, false
		}
		off += h + n
	}
	return off, true
}

// findNames locates kallsyms_markers, kallsyms_names and kallsyms_num_syms
// before the token table at tt.
func findNames(img []byte, tt int) (namesInfo, error) {
	le := binary.LittleEndian
	low := max(0, tt-namesWindow)
	for _, es := range []int{4, 8} {
		get := func(p int) uint64 {
			if es == 4 {
				return uint64(le.Uint32(img[p:]))
			}
			return le.Uint64(img[p:])
		}
		for p := (tt - 3*es) &^ 3; p >= low; p -= 4 {
			// Markers start with 0, then offsets 256 entries apart (each entry at
			// least 2 bytes, at most a few hundred in practice).
			if get(p) != 0 {
				continue
			}
			m1 := get(p + es)
			if m1 < 512 || m1 > 256*600 {
				continue
			}
			var m []uint64
			for q := p; q+es <= tt; q += es {
				v := get(q)
				if len(m) > 0 && (v <= m[len(m)-1] || v-m[len(m)-1] < 512 || v-m[len(m)-1] > 256*maxEntryLen) {
					break
				}
				m = append(m, v)
			}
			if len(m) < 2 {
				continue
			}
			if ni, ok := namesBeforeMarkers(img, p, es, m); ok {
				return ni, nil
			}
		}
	}
	return namesInfo{}, fmt.Errorf("%w: no names/markers before token table at %#x", ErrNoKallsyms, tt)
}

// namesBeforeMarkers looks for kallsyms_num_syms and kallsyms_names ending
// just before markers at p.
func namesBeforeMarkers(img []byte, p, es int, m []uint64) (namesInfo, bool) {
	le := binary.LittleEndian
	for mm := len(m); mm >= max(2, len(m)-3); mm-- {
		last := int(m[mm-1])
		lo, hi := 256*(mm-1)+1, 256*mm
		for s := p - last - 2; s >= 8 && s > p-last-256*600; s-- {
			for _, gap := range []int{8, 4} {
				n := int(le.Uint32(img[s-gap:]))
				if n < lo || n > hi || n > maxSyms {
					continue
				}
				if ni, ok := verifyNames(img, s, s-gap, p, es, n, m[:mm]); ok {
					return ni, true
				}
			}
		}
	}
	return namesInfo{}, false
}

func verifyNames(img []byte, s, numSyms, p, es, n int, m []uint64) (namesInfo, bool) {
	off := s
	for i := 0; i < n; i += 256 {
		if uint64(off-s) != m[i/256] {
			return namesInfo{}, false
		}
		var ok bool
		if off, ok = skipEntries(img, off, p, min(256, n-i)); !ok {
			return namesInfo{}, false
		}
	}
	if p-off >= 8 {
		return namesInfo{}, false
	}
	for _, c := range img[off:p] {
		if c != 0 {
			return namesInfo{}, false
		}
	}
	return namesInfo{numSyms: numSyms, names: s, markers: p, markerSize: es, n: n}, true
}

// decodeNames expands n entries of kallsyms_names.
func decodeNames(b []byte, n int, tokens []string) (names []string, types []byte, err error) {
	names = make([]string, n)
	types = make([]byte, n)
	var buf []byte
	off := 0
	for i := 0; i < n; i++ {
		l, h, ok := entryLen(b[off:])
		if !ok || len(b)-off < h+l {
			return nil, nil, fmt.Errorf("%w: names entry %d truncated", ErrNoKallsyms, i)
		}
		buf = buf[:0]
		for _, t := range b[off+h : off+h+l] {
			buf = append(buf, tokens[t]...)
			if len(buf) > maxSymNameLen {
				return nil, nil, fmt.Errorf("%w: symbol %d longer than %d bytes", ErrNoKallsyms, i, maxSymNameLen)
			}
		}
		if len(buf) < 2 {
			return nil, nil, fmt.Errorf("%w: empty symbol %d", ErrNoKallsyms, i)
		}
		types[i] = buf[0]
		names[i] = string(buf[1:])
		off += h + l
	}
	return names, types, nil
}

// findAddresses locates and decodes the address table for ni's n symbols:
// before kallsyms_num_syms (up to 6.3) or after the token index (6.4+).
func findAddresses(img []byte, ni namesInfo, afterIndex int, lay *KallsymsLayout) ([]uint64, error) {
	le := binary.LittleEndian
	n := ni.n
	align8 := func(x int) int { return (x + 7) &^ 7 }
	type cand struct {
		offsets, base int  // base < 0: absolute u64 addresses
		base32        bool // a 32-bit kernel's 4-byte kallsyms_relative_base
	}
	var cands []cand
	// Up to 6.3: offsets, relative_base, num_syms.
	rb := ni.numSyms - 8
	cands = append(cands, cand{rb - align8(4*n), rb, false}, cand{rb - 4*n, rb, false}, cand{align8(ni.numSyms-8*n) - 8, -1, false}, cand{ni.numSyms - 8*n, -1, false})
	// 32-bit kernels up to 6.3: relative_base is a 4-byte long.
	cands = append(cands, cand{ni.numSyms - 4 - 4*n, ni.numSyms - 4, true})
	// 6.4+: after the token index.
	for _, o := range []int{afterIndex, align8(afterIndex)} {
		cands = append(cands, cand{o, o + align8(4*n), false}, cand{o, o + 4*n, false}, cand{o, -1, false})
	}
	for _, c := range cands {
		if c.offsets < 0 || c.offsets > len(img) {
			continue
		}
		if c.base < 0 {
			if len(img)-c.offsets < 8*n {
				continue
			}
			addrs := make([]uint64, n)
			for i := range addrs {
				addrs[i] = le.Uint64(img[c.offsets+8*i:])
			}
			if sortedKernel(addrs) {
				lay.Addresses = c.offsets
				return addrs, nil
			}
			continue
		}
		if c.base+8 > len(img) || len(img)-c.offsets < 4*n || c.base < c.offsets+4*n {
			continue
		}
		base := le.Uint64(img[c.base:])
		if c.base32 {
			base = uint64(le.Uint32(img[c.base:]))
		}
		if base < 0xffff800000000000 && base>>32 == 0 && !(c.base32 && base >= 0x80000000) {
			continue // not a kernel address (64- or 32-bit)
		}
		abs := false
		for i := 0; i < n; i++ {
			if int32(le.Uint32(img[c.offsets+4*i:])) < 0 {
				abs = true
				break
			}
		}
		addrs := make([]uint64, n)
		for i := range addrs {
			v := int32(le.Uint32(img[c.offsets+4*i:]))
			switch {
			case !abs:
				addrs[i] = base + uint64(uint32(v))
			case v >= 0:
				addrs[i] = uint64(v)
			default:
				addrs[i] = base - 1 - uint64(int64(v))
			}
		}
		if sortedKernel(addrs) {
			lay.Addresses, lay.BaseRelative, lay.AbsolutePercpu, lay.RelativeBase = c.offsets, true, abs, base
			return addrs, nil
		}
	}
	return nil, fmt.Errorf("%w: no address table for %d symbols", ErrNoKallsyms, n)
}

// sortedKernel reports whether addrs is non-decreasing and ends in kernel space.
func sortedKernel(addrs []uint64) bool {
	for i := 1; i < len(addrs); i++ {
		if addrs[i] < addrs[i-1] {
			return false
		}
	}
	return len(addrs) > 0 && addrs[len(addrs)-1] >= 0xc0000000
}

// Len returns the number of symbols.
func (k *Kallsyms) Len() int { return len(k.addrs) }

// Symbols returns all symbols sorted by address.
func (k *Kallsyms) Symbols() []Symbol {
	out := make([]Symbol, len(k.addrs))
	for i := range out {
		out[i] = k.sym(i)
	}
	return out
}

// NamesWithPrefix yields the name of every symbol that starts with prefix,
// in name order (aliases once each). It reads only those names (a mapped
// profile's other pages stay untouched).
func (k *Kallsyms) NamesWithPrefix(prefix string) iter.Seq[string] {
	return func(yield func(string) bool) {
		j := sort.Search(len(k.byName), func(j int) bool { return k.name(int(k.byName[j])) >= prefix })
		prev := ""
		for ; j < len(k.byName); j++ {
			n := k.name(int(k.byName[j]))
			if !strings.HasPrefix(n, prefix) {
				return
			}
			if n != prev && !yield(n) {
				return
			}
			prev = n
		}
	}
}

// Lookup returns the link-time address of the first symbol called name.
func (k *Kallsyms) Lookup(name string) (uint64, bool) {
	j := sort.Search(len(k.byName), func(j int) bool { return k.name(int(k.byName[j])) >= name })
	if j == len(k.byName) || k.name(int(k.byName[j])) != name {
		return 0, false
	}
	return k.addrs[k.byName[j]], true
}

// Symbol returns the symbol containing link-time address addr: the last one
// at or below it (preferring a text symbol among equal addresses), and addr's
// offset from it. It fails below the first and above the last symbol, and for
// addresses in the per-CPU range (below the first kernel-space symbol) unless
// addr itself is per-CPU.
func (k *Kallsyms) Symbol(addr uint64) (Symbol, uint64, bool) {
	n := len(k.addrs)
	i := sort.Search(n, func(i int) bool { return k.addrs[i] > addr }) - 1
	if i < 0 || i == n-1 && addr != k.addrs[i] {
		return Symbol{}, 0, false
	}
	// Among aliases at the same address take the first text symbol, else the first.
	j := i
	for j > 0 && k.addrs[j-1] == k.addrs[i] {
		j--
	}
	best := i
	for x := j; x <= i; x++ {
		if t := k.types[x]; t == 'T' || t == 't' {
			best = x
			break
		}
	}
	s := k.sym(best)
	return s, addr - s.Addr, true
}
