// Package deb reads Debian binary packages (.deb) natively, without dpkg: the
// ar container, the control and data members (tar, compressed with xz, zstd,
// gzip or not at all) and the control file's fields and relations.
//
// Packages come from the network, so every length read from them is bounded
// by Limits before anything is allocated, and malformed input yields an error,
// never a panic.
//
// The ar container is read by this package rather than with
// github.com/blakesmith/ar: that reader does not check the archive magic and
// panics on hostile headers (a mode field shorter than three digits slices out
// of range, a negative size slices with a negative bound). Tests still build
// their packages with blakesmith/ar's writer, an independent implementation.
package deb

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// Limits bound what reading one package may cost.
type Limits struct {
	MaxMembers   int   // ar members in the package
	MaxEntries   int   // tar entries in one member
	MaxEntrySize int64 // size of one tar entry
	MaxTotal     int64 // decompressed bytes of one member
	MaxXZDict    int64 // dictionary an xz stream may ask for
}

// DefaultLimits fit any Debian kernel package with a wide margin.
var DefaultLimits = Limits{
	MaxMembers:   16,
	MaxEntries:   200_000,
	MaxEntrySize: 256 << 20,
	MaxTotal:     4 << 30,
	MaxXZDict:    128 << 20,
}

// Member names one of the two tar members of a package.
type Member string

// The members Walk can read.
const (
	ControlMember Member = "control"
	DataMember    Member = "data"
)

// ErrStop, returned by a WalkFunc, ends Walk early without an error.
var ErrStop = errors.New("deb: stop walking")

// ErrFormat is wrapped by every error about malformed package contents.
var ErrFormat = errors.New("malformed package")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("deb: %w: %s", ErrFormat, fmt.Sprintf(format, args...))
}

// WalkFunc is called for each tar entry of a member; r yields the entry's
// content (at most Limits.MaxEntrySize bytes) and is valid only during the
// call. The entry name is cleaned: "./boot/x" becomes "boot/x".
type WalkFunc func(h *tar.Header, name string, r io.Reader) error

const (
	arMagic      = "!<arch>\n"
	arHeaderSize = 60
)

// arHeader is one member header of an ar archive.
type arHeader struct {
	name string
	size int64
}

// arReader reads the members of an ar archive in order.
type arReader struct {
	r         *bufio.Reader
	remaining int64 // unread bytes of the current member
	pad       int64 // padding after the current member
}

func newARReader(r io.Reader) (*arReader, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var magic [len(arMagic)]byte
	if _, err := io.ReadFull(br, magic[:]); err != nil {
		return nil, formatErr("reading ar magic: %v", err)
	}
	if string(magic[:]) != arMagic {
		return nil, formatErr("not an ar archive (magic %q)", magic[:])
	}
	return &arReader{r: br}, nil
}

// next skips the rest of the current member and reads the next header;
// io.EOF at a clean end.
func (a *arReader) next(maxSize int64) (arHeader, error) {
	if _, err := io.CopyN(io.Discard, a.r, a.remaining+a.pad); err != nil {
		return arHeader{}, formatErr("skipping ar member: %v", noEOF(err))
	}
	a.remaining, a.pad = 0, 0
	var b [arHeaderSize]byte
	n, err := io.ReadFull(a.r, b[:])
	if err == io.EOF && n == 0 {
		return arHeader{}, io.EOF
	}
	if err != nil {
		return arHeader{}, formatErr("reading ar header: %v", noEOF(err))
	}
	if b[58] != '`' || b[59] != '\n' {
		return arHeader{}, formatErr("bad ar header terminator %q", b[58:60])
	}
	name := strings.TrimRight(string(b[0:16]), " ")
	name = strings.TrimSuffix(name, "/") // GNU ar
	sizeField := strings.TrimRight(string(b[48:58]), " ")
	size, err := strconv.ParseInt(sizeField, 10, 64)
	if err != nil || size < 0 {
		return arHeader{}, formatErr("bad ar member size %q", sizeField)
	}
	if size > maxSize {
		return arHeader{}, formatErr("ar member %q is %d bytes, more than the limit %d", name, size, maxSize)
	}
	a.remaining, a.pad = size, size%2
	return arHeader{name: name, size: size}, nil
}

// Read reads from the current member.
func (a *arReader) Read(p []byte) (int, error) {
	if a.remaining <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > a.remaining {
		p = p[:a.remaining]
	}
	n, err := a.r.Read(p)
	a.remaining -= int64(n)
	if err == io.EOF && a.remaining > 0 {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func noEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// Walk reads the package from r and calls fn for every entry of the chosen
// member's tar archive, in archive order.
func Walk(r io.Reader, lim Limits, member Member, fn WalkFunc) error {
	ar, err := newARReader(r)
	if err != nil {
		return err
	}
	sawVersion := false
	for i := 0; ; i++ {
		if i >= lim.MaxMembers {
			return formatErr("more than %d ar members", lim.MaxMembers)
		}
		h, err := ar.next(lim.MaxTotal)
		if err == io.EOF {
			return formatErr("no %s member", member)
		}
		if err != nil {
			return err
		}
		if i == 0 {
			if h.name != "debian-binary" {
				return formatErr("first member is %q, not debian-binary", h.name)
			}
			v, err := io.ReadAll(io.LimitReader(ar, 64))
			if err != nil {
				return formatErr("reading debian-binary: %v", err)
			}
			if !strings.HasPrefix(string(v), "2.") {
				return formatErr("unsupported package format %q", strings.TrimSpace(string(v)))
			}
			sawVersion = true
			continue
		}
		base, ext, ok := strings.Cut(h.name, ".tar")
		if !ok || base != string(member) {
			continue
		}
		if !sawVersion {
			return formatErr("missing debian-binary")
		}
		dr, closeFn, err := decompressor(ext, ar, lim)
		if err != nil {
			return fmt.Errorf("deb: member %s: %w", h.name, err)
		}
		err = walkTar(&capReader{r: dr, left: lim.MaxTotal}, lim, fn)
		closeFn()
		if errors.Is(err, ErrStop) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("deb: member %s: %w", h.name, err)
		}
		return nil
	}
}

// decompressor returns a reader for a member compressed as ext says.
func decompressor(ext string, r io.Reader, lim Limits) (io.Reader, func(), error) {
	nop := func() {}
	switch ext {
	case "":
		return r, nop, nil
	case ".gz":
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, nil, formatErr("gzip: %v", err)
		}
		return zr, func() { zr.Close() }, nil
	case ".xz":
		br := bufio.NewReaderSize(r, 64<<10)
		if err := checkXZDict(br, lim.MaxXZDict); err != nil {
			return nil, nil, err
		}
		// DictCap is only a floor: the stream's own dictionary size wins.
		// The default floor (8 MiB) would be allocated even for tiny streams.
		xr, err := xz.ReaderConfig{DictCap: 1 << 16}.NewReader(br)
		if err != nil {
			return nil, nil, formatErr("xz: %v", err)
		}
		return xr, nop, nil
	case ".zst":
		zr, err := zstd.NewReader(r,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(uint64(lim.MaxTotal)),
			zstd.WithDecoderMaxWindow(uint64(lim.MaxXZDict)))
		if err != nil {
			return nil, nil, formatErr("zstd: %v", err)
		}
		return zr, zr.Close, nil
	default:
		return nil, nil, formatErr("unsupported compression %q", ext)
	}
}

// checkXZDict peeks at the first block header of an xz stream and refuses a
// dictionary larger than maxDict: the decoder allocates whatever the header
// asks for, up to 4 GiB. Later blocks are not checked; packages come from
// an archive whose signatures apt has verified, so this guards against
// accidents (and keeps fuzzing bounded) rather than against a hostile archive.
func checkXZDict(br *bufio.Reader, maxDict int64) error {
	head, _ := br.Peek(12 + 1024)
	if len(head) < 13 {
		return nil // let the decoder report the short stream
	}
	blk := head[12:]
	if blk[0] == 0 { // an index, not a block: empty stream
		return nil
	}
	size := (int(blk[0]) + 1) * 4
	if size > len(blk) {
		return nil
	}
	blk = blk[1:size]
	flags := blk[0]
	blk = blk[1:]
	readVarint := func() (uint64, bool) {
		var v uint64
		for i := 0; i < 9 && i < len(blk); i++ {
			v |= uint64(blk[i]&0x7f) << (7 * i)
			if blk[i]&0x80 == 0 {
				blk = blk[i+1:]
				return v, true
			}
		}
		return 0, false
	}
	if flags&0x40 != 0 {
		if _, ok := readVarint(); !ok {
			return nil
		}
	}
	if flags&0x80 != 0 {
		if _, ok := readVarint(); !ok {
			return nil
		}
	}
	for f := 0; f <= int(flags&3); f++ {
		id, ok := readVarint()
		if !ok {
			return nil
		}
		n, ok := readVarint()
		if !ok || n > uint64(len(blk)) {
			return nil
		}
		props := blk[:n]
		blk = blk[n:]
		if id == 0x21 && len(props) == 1 { // LZMA2
			b := props[0]
			if b > 40 {
				return formatErr("xz: bad dictionary size byte %d", b)
			}
			dict := int64(0xFFFFFFFF)
			if b < 40 {
				dict = int64(2|(b&1)) << (b/2 + 11)
			}
			if dict > maxDict {
				return formatErr("xz: dictionary of %d bytes exceeds the limit %d", dict, maxDict)
			}
		}
	}
	return nil
}

// capReader fails once more than left bytes have been read.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, formatErr("member decompresses to more than the limit")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}

func walkTar(r io.Reader, lim Limits, fn WalkFunc) error {
	tr := tar.NewReader(r)
	for i := 0; ; i++ {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return formatErr("tar: %v", err)
		}
		if i >= lim.MaxEntries {
			return formatErr("more than %d tar entries", lim.MaxEntries)
		}
		if h.Size < 0 || h.Size > lim.MaxEntrySize {
			return formatErr("tar entry %q is %d bytes, more than the limit %d", h.Name, h.Size, lim.MaxEntrySize)
		}
		name := CleanName(h.Name)
		if err := fn(h, name, io.LimitReader(tr, h.Size)); err != nil {
			return err
		}
	}
}

// CleanName turns a tar entry name such as "./lib/modules/" into a clean
// relative path ("lib/modules"); "." for the root.
func CleanName(name string) string {
	c := path.Clean("/" + name)
	if c == "/" {
		return "."
	}
	return c[1:]
}

// ReadFile returns the content of the entry named name (cleaned, as in
// WalkFunc) in the given member, reading at most max bytes.
func ReadFile(r io.Reader, lim Limits, member Member, name string, max int64) ([]byte, error) {
	var data []byte
	found := false
	err := Walk(r, lim, member, func(h *tar.Header, n string, er io.Reader) error {
		if n != name || h.Typeflag != tar.TypeReg {
			return nil
		}
		if h.Size > max {
			return formatErr("%s is %d bytes, more than the limit %d", name, h.Size, max)
		}
		var err error
		if data, err = io.ReadAll(er); err != nil {
			return formatErr("reading %s: %v", name, err)
		}
		found = true
		return ErrStop
	})
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("deb: %w: no %s in the %s member", ErrFormat, name, member)
	}
	return data, nil
}

// ReadControl returns the parsed control file of the package read from r.
func ReadControl(r io.Reader, lim Limits) (Control, error) {
	data, err := ReadFile(r, lim, ControlMember, "control", 1<<20)
	if err != nil {
		return nil, err
	}
	return ParseControl(data)
}

// Control holds the fields of a control file, keyed by canonical field name
// ("Package", "Version", "Depends", ...). Continuation lines are joined with
// newlines.
type Control map[string]string

// MaxControlFields bounds the fields ParseControl accepts.
const MaxControlFields = 1000

// ParseControl parses one control paragraph (RFC 822 style).
func ParseControl(data []byte) (Control, error) {
	c := Control{}
	last := ""
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimRight(line, "\r")
		if strings.TrimSpace(line) == "" {
			if len(c) > 0 {
				break // end of the first paragraph
			}
			continue
		}
		if line[0] == '#' {
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last == "" {
				return nil, formatErr("control line %d: continuation without a field", i+1)
			}
			c[last] += "\n" + strings.TrimSpace(line)
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return nil, formatErr("control line %d: not a field: %q", i+1, trunc(line, 60))
		}
		if len(c) >= MaxControlFields {
			return nil, formatErr("more than %d control fields", MaxControlFields)
		}
		last = canonicalField(k)
		c[last] = strings.TrimSpace(v)
	}
	if len(c) == 0 {
		return nil, formatErr("empty control file")
	}
	return c, nil
}

func canonicalField(k string) string {
	b := []byte(strings.ToLower(k))
	up := true
	for i, ch := range b {
		if up && ch >= 'a' && ch <= 'z' {
			b[i] = ch - 'a' + 'A'
		}
		up = ch == '-'
	}
	return string(b)
}

func trunc(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// Dep is one alternative in a relation field, e.g. "linux-image-6.1.0-56-amd64 (= 6.1.192-2)".
type Dep struct {
	Name    string
	Arch    string // after ':' in the name, if any
	Op      string // "", "<<", "<=", "=", ">=", ">>"
	Version string
}

// Relation is one comma-separated element of a relation field: a list of
// alternatives separated by '|'.
type Relation []Dep

// ParseRelations parses a Depends-style field.
func ParseRelations(field string) ([]Relation, error) {
	var rels []Relation
	field = strings.ReplaceAll(field, "\n", " ")
	for _, part := range strings.Split(field, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var rel Relation
		for _, alt := range strings.Split(part, "|") {
			d, err := parseDep(strings.TrimSpace(alt))
			if err != nil {
				return nil, err
			}
			rel = append(rel, d)
		}
		rels = append(rels, rel)
	}
	return rels, nil
}

func parseDep(s string) (Dep, error) {
	// Drop architecture restrictions "[amd64]" and build profiles "<!nocheck>".
	if i := strings.IndexAny(s, "[<"); i >= 0 && !strings.Contains(s[:i], "(") {
		s = strings.TrimSpace(s[:i])
	}
	var d Dep
	name, rest, _ := strings.Cut(s, "(")
	name = strings.TrimSpace(name)
	if j := strings.IndexAny(name, " \t["); j >= 0 {
		name = name[:j]
	}
	name, d.Arch, _ = strings.Cut(name, ":")
	if name == "" || !validPackageName(name) {
		return Dep{}, formatErr("bad package name in relation %q", trunc(s, 60))
	}
	d.Name = name
	if rest != "" {
		inner, _, ok := strings.Cut(rest, ")")
		if !ok {
			return Dep{}, formatErr("unclosed version in relation %q", trunc(s, 60))
		}
		inner = strings.TrimSpace(inner)
		for _, op := range []string{"<<", "<=", ">=", ">>", "=", "<", ">"} {
			if strings.HasPrefix(inner, op) {
				d.Op, d.Version = op, strings.TrimSpace(inner[len(op):])
				break
			}
		}
		if d.Op == "" || d.Version == "" {
			return Dep{}, formatErr("bad version constraint in relation %q", trunc(s, 60))
		}
	}
	return d, nil
}

func validPackageName(n string) bool {
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}
