package linux

import (
	"bufio"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Profile cache.
//
// A profile is built from its kernel image once (NewProfile: decompress,
// find and decode kallsyms, index BTF; ~2 s) and cached in one file per
// kernel build, <BannerKey>.profile2, laid out so that it is used in place:
// LoadCachedProfile checks it and maps its symbol columns read-only: the
// returned Profile's Kallsyms are slices of the mapping, and its BTF reads
// the file with pread when a lookup needs it. Nothing is decoded onto the
// heap; a process pays in memory only for the pages its symbol lookups
// touch (clean page-cache pages, shared by every process using the same
// kernel's profile), and a few blocks of BTF strings.
//
// The file, little-endian, every section 8-byte aligned:
//
//	header   profileHeader: magic, format, symbol count, each section's
//	         offset and length, and the SHA-256 of the file (header with
//	         the sum zeroed, then the rest)
//	meta     JSON: banner, release, build ID, compression, kallsyms layout
//	addrs    N uint64: symbol addresses, sorted (Kallsyms.addrs)
//	types    N bytes: symbol type letters
//	nameEnd  N uint32: end of each symbol's name in names
//	byName   N int32: symbol indices sorted by name
//	names    the names, concatenated
//	btf      the kernel's .BTF section as it is
//	btfOffs  uint32 per type: its offset in the BTF type section
//	btfNamed uint32 per named struct and union: IDs sorted by name
//
// Checks before use (LoadCachedProfile): the sum over the whole file and
// the sections' bounds, read with read(2) rather than through the mapping;
// every name end and name index in bounds, so that no lookup can index
// outside the mapping. The BTF offsets are checked at each use.
//
// A mapped file must not change while mapped: cache files are only ever
// replaced by renaming a new file over them (writeFileAtomic), which
// leaves the mapped one intact. The mapping is kept for the life of the
// process (symbol names returned by lookups point into it).

// cacheFormat is bumped when the cached encoding changes.
const cacheFormat = 2

// profileFile is the name of the cache file of the kernel build whose
// BannerKey is key. It names the format (format 1 was <key>.profile, a
// gob), so that two gatevisor versions sharing a cache do not rebuild each
// other's files.
func profileFile(key string) string { return key + ".profile2" }

// profileMagic starts a profile cache file.
var profileMagic = [8]byte{'g', 'v', 'p', 'r', 'o', 'f', 'l', 0}

// section is one section of a cache file.
type section struct{ Off, Len uint64 }

// profileHeader is a cache file's header.
type profileHeader struct {
	Magic                                                              [8]byte
	Format                                                             uint32
	NumSyms                                                            uint32
	Meta, Addrs, Types, NameEnd, ByName, Names, BTF, BTFOffs, BTFNamed section
	Sum                                                                [32]byte
}

// profileMeta is a cache file's meta section.
type profileMeta struct {
	Banner      string
	Release     string
	BuildID     string
	Compression Compression
	Layout      KallsymsLayout
	Arch        string `json:",omitempty"` // "" for amd64
}

var headerSize = uint64(binary.Size(profileHeader{}))

// sections returns the header's sections in file order.
func (h *profileHeader) sections() []*section {
	return []*section{&h.Meta, &h.Addrs, &h.Types, &h.NameEnd, &h.ByName, &h.Names, &h.BTF, &h.BTFOffs, &h.BTFNamed}
}

// ProfileCacheDir returns the directory profiles are cached in:
// <user cache dir>/gatevisor/profiles.
func ProfileCacheDir() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("linux: no cache directory: %w", err)
	}
	return filepath.Join(d, "gatevisor", "profiles"), nil
}

// BannerKey is the cache key of a kernel build: the sha256 of its banner,
// which names the release, the compiler, the build number and date.
func BannerKey(banner string) string {
	h := sha256.Sum256([]byte(banner))
	return hex.EncodeToString(h[:16])
}

// LoadProfile returns the profile of the kernel image at path, from the cache
// in cacheDir ("" means ProfileCacheDir) when it has one for this image, and
// builds and caches it otherwise. Cache failures are not fatal: the profile is
// then built from the image (and kept on the heap).
func LoadProfile(path, cacheDir string) (*Profile, error) {
	return LoadProfileWith(path, cacheDir, ProfileOptions{})
}

// LoadProfileWith is LoadProfile with the layouts of a kernel without BTF
// from opts.Symbols (see NewProfileWith). Only profiles with BTF are
// cached: one from a symbol table is built from the image at each load.
func LoadProfileWith(path, cacheDir string, opts ProfileOptions) (*Profile, error) {
	if opts.IgnoreBTF {
		return profileFromFile(path, opts)
	}
	if cacheDir == "" {
		var err error
		if cacheDir, err = ProfileCacheDir(); err != nil {
			img, err := os.ReadFile(path)
			if err != nil {
				return nil, fmt.Errorf("linux: read kernel image: %w", err)
			}
			return NewProfileWith(img, opts)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("linux: read kernel image: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("linux: read kernel image: %w", err)
	}
	index := filepath.Join(cacheDir, "image-"+hex.EncodeToString(h.Sum(nil)[:16]))
	if key, err := os.ReadFile(index); err == nil {
		if p, err := LoadCachedProfile(cacheDir, strings.TrimSpace(string(key))); err == nil {
			return p, nil
		}
	}
	p, err := profileFromFile(path, opts)
	if err != nil {
		return nil, err
	}
	if p.BTF == nil {
		return p, nil
	}
	if err := p.store(cacheDir); err != nil {
		return p, nil
	}
	key := BannerKey(p.Banner)
	_ = writeFileAtomic(index, []byte(key+"\n"))
	// Use the cached form, mapped: the columns and BTF just built are
	// then garbage.
	if q, err := LoadCachedProfile(cacheDir, key); err == nil {
		return q, nil
	}
	return p, nil
}

// profileFromFile builds the profile of the kernel image at path; the
// image is garbage once it returns.
func profileFromFile(path string, opts ProfileOptions) (*Profile, error) {
	img, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("linux: read kernel image: %w", err)
	}
	return NewProfileWith(img, opts)
}

// LoadCachedProfile loads the cached profile with the given BannerKey, for
// example to analyse a dump whose banner is known but whose image is not.
func LoadCachedProfile(cacheDir, key string) (*Profile, error) {
	if strings.ContainsAny(key, `/\.`) || key == "" {
		return nil, fmt.Errorf("linux: bad profile key %q", key)
	}
	f, err := os.Open(filepath.Join(cacheDir, profileFile(key)))
	if err != nil {
		return nil, err
	}
	p, err := loadProfileFile(f, key)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("linux: cached profile %s: %w", key, err)
	}
	// f stays open: p's BTF reads from it (and os.File closes it when
	// p's BTF is unreachable).
	return p, nil
}

var errStaleProfile = errors.New("stale or inconsistent")

// loadProfileFile checks the cache file f and returns its profile, mapped.
func loadProfileFile(f *os.File, key string) (*Profile, error) {
	if !littleEndianHost() {
		return nil, fmt.Errorf("%w: cache files are little-endian", errStaleProfile)
	}
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	size := uint64(st.Size())
	var h profileHeader
	if err := binary.Read(io.NewSectionReader(f, 0, int64(headerSize)), binary.LittleEndian, &h); err != nil {
		return nil, fmt.Errorf("%w: header: %v", errStaleProfile, err)
	}
	if h.Magic != profileMagic || h.Format != cacheFormat {
		return nil, fmt.Errorf("%w: format %d", errStaleProfile, h.Format)
	}
	if err := h.check(size); err != nil {
		return nil, fmt.Errorf("%w: %v", errStaleProfile, err)
	}
	if sum, err := fileSum(f, &h); err != nil || sum != h.Sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errStaleProfile)
	}
	var meta profileMeta
	if err := json.NewDecoder(io.NewSectionReader(f, int64(h.Meta.Off), int64(h.Meta.Len))).Decode(&meta); err != nil {
		return nil, fmt.Errorf("%w: meta: %v", errStaleProfile, err)
	}
	if BannerKey(meta.Banner) != key {
		return nil, fmt.Errorf("%w: banner of another kernel", errStaleProfile)
	}
	if err := checkNameColumns(f, &h); err != nil {
		return nil, fmt.Errorf("%w: %v", errStaleProfile, err)
	}
	// Only the symbol columns are mapped; BTF is read with pread.
	m, err := mapFile(f, h.Names.Off+h.Names.Len)
	if err != nil {
		return nil, err
	}
	sec := func(s section) []byte { return m[s.Off : s.Off+s.Len : s.Off+s.Len] }
	p := &Profile{Banner: meta.Banner, Release: meta.Release, BuildID: meta.BuildID, Compression: meta.Compression, Arch: meta.Arch}
	p.Symbols = &Kallsyms{Layout: meta.Layout, addrs: u64s(sec(h.Addrs)), types: sec(h.Types),
		nameEnd: u32s(sec(h.NameEnd)), byName: i32s(sec(h.ByName)), names: bytesString(sec(h.Names))}
	if p.BTF, err = btfFromIndex(f, h.BTF.Off, h.BTF.Len, int64(h.BTFOffs.Off), int(h.BTFOffs.Len/4),
		int64(h.BTFNamed.Off), int(h.BTFNamed.Len/4)); err != nil {
		return nil, fmt.Errorf("%w: %v", errStaleProfile, err)
	}
	return p, nil
}

// check checks the sections against the file's size and each other.
func (h *profileHeader) check(size uint64) error {
	end := headerSize
	for i, s := range h.sections() {
		if s.Off%8 != 0 || s.Off < end || s.Len > size || s.Off > size-s.Len {
			return fmt.Errorf("section %d out of place", i)
		}
		end = s.Off + s.Len
	}
	n := uint64(h.NumSyms)
	if n > maxSyms || h.Addrs.Len != 8*n || h.Types.Len != n || h.NameEnd.Len != 4*n || h.ByName.Len != 4*n ||
		h.BTFOffs.Len%4 != 0 || h.BTFNamed.Len%4 != 0 || h.Names.Len > 1<<32-1 || h.Meta.Len > 1<<20 {
		return errors.New("section lengths disagree")
	}
	return nil
}

// fileSum returns the SHA-256 of f as h.Sum covers it: the header with
// the sum zeroed, then everything after it.
func fileSum(f *os.File, h *profileHeader) ([32]byte, error) {
	s := sha256.New()
	hz := *h
	hz.Sum = [32]byte{}
	if err := binary.Write(s, binary.LittleEndian, &hz); err != nil {
		return [32]byte{}, err
	}
	if _, err := io.Copy(s, io.NewSectionReader(f, int64(headerSize), 1<<40)); err != nil {
		return [32]byte{}, err
	}
	var sum [32]byte
	copy(sum[:], s.Sum(nil))
	return sum, nil
}

// checkNameColumns checks that every name end is in order and within the
// names, and every name index below the symbol count: then no symbol
// lookup can reach outside its section, whatever the file says.
func checkNameColumns(f *os.File, h *profileHeader) error {
	r := bufio.NewReaderSize(io.NewSectionReader(f, int64(h.NameEnd.Off), int64(h.NameEnd.Len)), 64<<10)
	var b [4]byte
	prev := uint32(0)
	for i := range h.NumSyms {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		e := binary.LittleEndian.Uint32(b[:])
		if e < prev || uint64(e) > h.Names.Len {
			return fmt.Errorf("symbol %d: name end %d out of order or bounds", i, e)
		}
		prev = e
	}
	r.Reset(io.NewSectionReader(f, int64(h.ByName.Off), int64(h.ByName.Len)))
	for i := range h.NumSyms {
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return err
		}
		if x := binary.LittleEndian.Uint32(b[:]); x >= h.NumSyms {
			return fmt.Errorf("name index %d: symbol %d of %d", i, x, h.NumSyms)
		}
	}
	return nil
}

// store writes p's cache file in dir. It needs p's BTF section and index
// (any profile has them) and its symbol columns.
func (p *Profile) store(dir string) error {
	if p.BTF == nil || p.Symbols == nil {
		return fmt.Errorf("linux: profile of %s: no BTF or symbols to cache", p.Release)
	}
	k, b := p.Symbols, p.BTF
	n := len(k.addrs)
	if len(k.types) != n || len(k.nameEnd) != n || len(k.byName) != n || n > maxSyms {
		return fmt.Errorf("linux: profile of %s: inconsistent symbol columns", p.Release)
	}
	raw, err := b.Raw()
	if err != nil {
		return err
	}
	meta, err := json.Marshal(profileMeta{Banner: p.Banner, Release: p.Release, BuildID: p.BuildID,
		Compression: p.Compression, Layout: k.Layout, Arch: p.Arch})
	if err != nil {
		return err
	}
	h := profileHeader{Magic: profileMagic, Format: cacheFormat, NumSyms: uint32(n)}
	lens := []uint64{uint64(len(meta)), 8 * uint64(n), uint64(n), 4 * uint64(n), 4 * uint64(n),
		uint64(len(k.names)), uint64(len(raw)), 4 * uint64(b.offs.len()), 4 * uint64(b.named.len())}
	off := headerSize
	for i, s := range h.sections() {
		off = (off + 7) &^ 7
		s.Off, s.Len = off, lens[i]
		off += lens[i]
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	sum := sha256.New()
	hz := h
	if err := binary.Write(sum, binary.LittleEndian, &hz); err != nil {
		tmp.Close()
		return err
	}
	w := &sectionWriter{w: bufio.NewWriterSize(tmp, 64<<10), sum: sum, off: headerSize}
	if _, err := w.w.Write(make([]byte, headerSize)); err != nil {
		tmp.Close()
		return err
	}
	w.section(h.Meta.Off, meta)
	w.section(h.Addrs.Off, nil)
	for _, a := range k.addrs {
		w.u64(a)
	}
	w.section(h.Types.Off, k.types)
	w.section(h.NameEnd.Off, nil)
	for _, e := range k.nameEnd {
		w.u32(e)
	}
	w.section(h.ByName.Off, nil)
	for _, x := range k.byName {
		w.u32(uint32(x))
	}
	w.section(h.Names.Off, []byte(k.names))
	w.section(h.BTF.Off, raw)
	for j, t := range []*u32Table{&b.offs, &b.named} {
		w.section([]uint64{h.BTFOffs.Off, h.BTFNamed.Off}[j], nil)
		for i := range t.len() {
			x, ok := t.at(i)
			if !ok && w.err == nil {
				w.err = fmt.Errorf("linux: profile of %s: BTF index unreadable", p.Release)
			}
			w.u32(x)
		}
	}
	if w.err == nil {
		w.err = w.w.Flush()
	}
	if w.err == nil {
		copy(h.Sum[:], sum.Sum(nil))
		var hb [512]byte
		_, w.err = binary.Encode(hb[:], binary.LittleEndian, &h)
		if w.err == nil {
			_, w.err = tmp.WriteAt(hb[:headerSize], 0)
		}
	}
	if err := tmp.Close(); w.err == nil {
		w.err = err
	}
	if w.err != nil {
		return w.err
	}
	return os.Rename(tmp.Name(), filepath.Join(dir, profileFile(BannerKey(p.Banner))))
}

// sectionWriter writes a cache file's sections after its header, padding
// each to its offset, into the file and its sum.
type sectionWriter struct {
	w   *bufio.Writer
	sum hash.Hash
	off uint64
	err error
	b   [8]byte
}

func (w *sectionWriter) write(b []byte) {
	if w.err != nil {
		return
	}
	if _, w.err = w.w.Write(b); w.err == nil {
		w.sum.Write(b)
		w.off += uint64(len(b))
	}
}

// section pads to off, then writes b.
func (w *sectionWriter) section(off uint64, b []byte) {
	for w.off < off && w.err == nil {
		w.write([]byte{0})
	}
	w.write(b)
}

func (w *sectionWriter) u64(v uint64) {
	binary.LittleEndian.PutUint64(w.b[:], v)
	w.write(w.b[:8])
}

func (w *sectionWriter) u32(v uint32) {
	binary.LittleEndian.PutUint32(w.b[:], v)
	w.write(w.b[:4])
}
