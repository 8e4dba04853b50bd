package file

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// 9P2000.L message types (Linux include/net/9p/9p.h).
const (
	tLerror      = 6
	tStatfs      = 8
	tLopen       = 12
	tLcreate     = 14
	tSymlink     = 16
	tMknod       = 18
	tRename      = 20
	tReadlink    = 22
	tGetattr     = 24
	tSetattr     = 26
	tXattrwalk   = 30
	tXattrcreate = 32
	tReaddir     = 40
	tFsync       = 50
	tLock        = 52
	tGetlock     = 54
	tLink        = 70
	tMkdir       = 72
	tRenameat    = 74
	tUnlinkat    = 76
	tVersion     = 100
	tAuth        = 102
	tAttach      = 104
	tFlush       = 108
	tWalk        = 110
	tRead        = 116
	tWrite       = 118
	tClunk       = 120
	tRemove      = 122
)

// Protocol limits.
const (
	// MaxMsize is the largest message the server accepts or sends; the
	// client's Tversion may ask for less.
	MaxMsize = 128 << 10
	// minMsize is the least msize the server agrees to.
	minMsize = 4096
	// hdrLen is size[4] type[1] tag[2].
	hdrLen = 7
	// ioHdr is what a Rread or Twrite adds to its data (hdr + count[4]).
	ioHdr = hdrLen + 4
	// maxWalk is MAXWELEM: the names one Twalk may carry.
	maxWalk = 16
	// noFid is NOFID.
	noFid = ^uint32(0)
	// maxName caps a path element.
	maxName = 255
)

// ErrMessage means a message is malformed: the connection is closed (9P
// has no way to answer a message whose framing cannot be trusted).
var ErrMessage = errors.New("9p: malformed message")

// readMsg reads one message (header included) of at most msize bytes.
func readMsg(r io.Reader, buf []byte, msize uint32) ([]byte, error) {
	if _, err := io.ReadFull(r, buf[:4]); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(buf)
	if n < hdrLen || n > msize || int(n) > len(buf) {
		return nil, fmt.Errorf("%w: size %d (msize %d)", ErrMessage, n, msize)
	}
	if _, err := io.ReadFull(r, buf[4:n]); err != nil {
		return nil, err
	}
	return buf[:n], nil
}

// dec decodes a message body; the first failure sticks and every later
// read returns zero values.
type dec struct {
	b   []byte
	err error
}

func (d *dec) fail() {
	if d.err == nil {
		d.err = ErrMessage
	}
	d.b = nil
}

func (d *dec) u8() uint8 {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *dec) u16() uint16 {
	if len(d.b) < 2 {
		d.fail()
		return 0
	}
	v := binary.LittleEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *dec) u32() uint32 {
	if len(d.b) < 4 {
		d.fail()
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *dec) u64() uint64 {
	if len(d.b) < 8 {
		d.fail()
		return 0
	}
	v := binary.LittleEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

// str reads a 9P string (len[2] bytes) of at most max bytes.
func (d *dec) str(max int) string {
	n := int(d.u16())
	if d.err != nil || n > len(d.b) || n > max {
		d.fail()
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

// data reads count[4] bytes.
func (d *dec) data() []byte {
	n := d.u32()
	if d.err != nil || uint64(n) > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// enc builds a reply in a buffer of at most msize bytes.
type enc struct {
	b []byte
}

func newReply(buf []byte, typ uint8, tag uint16) *enc {
	e := &enc{b: buf[:0]}
	e.u32(0)
	e.u8(typ)
	e.u16(tag)
	return e
}

func (e *enc) u8(v uint8)   { e.b = append(e.b, v) }
func (e *enc) u16(v uint16) { e.b = binary.LittleEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *enc) str(s string) {
	if len(s) > 0xffff {
		s = s[:0xffff]
	}
	e.u16(uint16(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) qid(q qid) {
	e.u8(q.typ)
	e.u32(q.version)
	e.u64(q.path)
}

// finish writes the size and returns the message.
func (e *enc) finish() []byte {
	binary.LittleEndian.PutUint32(e.b, uint32(len(e.b)))
	return e.b
}

// qid is a file's identity: type, version, path (the host inode).
type qid struct {
	typ     uint8
	version uint32
	path    uint64
}

const (
	qtDir     = 0x80
	qtSymlink = 0x02
	qtFile    = 0x00
)

// validName reports whether a path element from the guest names an
// entry of a directory: not empty, not "." and without '/' or NUL ("..",
// which Twalk takes, is checked by its caller).
func validName(s string) bool {
	if s == "" || s == "." || s == ".." || len(s) > maxName {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == '/' || s[i] == 0 {
			return false
		}
	}
	return true
}
