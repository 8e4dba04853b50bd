package vhostuser

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Front-end message types (vhost-user.rst, "Front-end message types").
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFD            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
)

// Header flags.
const (
	flagVersion   = 0x1
	flagVersionMk = 0x3
	flagReply     = 0x4
	flagNeedReply = 0x8
)

// Features.
const (
	// FeatureVersion1 is VIRTIO_F_VERSION_1.
	FeatureVersion1 = uint64(1) << 32
	// featureProtocol is VHOST_USER_F_PROTOCOL_FEATURES.
	featureProtocol = uint64(1) << 30

	protoMQ       = uint64(1) << 0
	protoReplyAck = uint64(1) << 3
	// protoFeatures are the protocol features offered: what is implemented.
	protoFeatures = protoMQ | protoReplyAck
)

// Limits.
const (
	hdrSize = 12
	// maxPayload bounds a message's payload (the largest understood is
	// SET_MEM_TABLE: 8 + 8 regions of 32 bytes).
	maxPayload = 4096
	// maxFDs bounds the descriptors one message may carry.
	maxFDs = 8
	// maxRegions is VHOST_MEMORY_BASELINE_NREGIONS (no CONFIGURE_MEM_SLOTS).
	maxRegions = 8
	// MaxQueueSize is the largest ring accepted (the split ring's maximum).
	MaxQueueSize = 32768
	// vringInvalidFD is the "no file descriptor" bit of SET_VRING_KICK/CALL/ERR.
	vringInvalidFD = 1 << 8
)

// ErrProtocol means the front end sent a message that does not parse or
// is not allowed now: the connection ends.
var ErrProtocol = errors.New("vhost-user: protocol error")

// msg is one front-end message: its header fields, payload and the
// descriptors that came with it (owned by the message until taken).
type msg struct {
	req, flags uint32
	payload    []byte
	fds        []int
}

// parseHeader checks a message header and returns the request, flags and
// payload size.
func parseHeader(b []byte) (req, flags, size uint32, err error) {
	if len(b) < hdrSize {
		return 0, 0, 0, fmt.Errorf("%w: header of %d bytes", ErrProtocol, len(b))
	}
	req = binary.LittleEndian.Uint32(b)
	flags = binary.LittleEndian.Uint32(b[4:])
	size = binary.LittleEndian.Uint32(b[8:])
	if flags&flagVersionMk != flagVersion {
		return 0, 0, 0, fmt.Errorf("%w: version %d", ErrProtocol, flags&flagVersionMk)
	}
	if flags&flagReply != 0 {
		return 0, 0, 0, fmt.Errorf("%w: a reply from the front end", ErrProtocol)
	}
	if size > maxPayload {
		return 0, 0, 0, fmt.Errorf("%w: payload of %d bytes", ErrProtocol, size)
	}
	return req, flags, size, nil
}

// u64 is a payload of one u64.
func (m *msg) u64() (uint64, error) {
	if len(m.payload) != 8 {
		return 0, fmt.Errorf("%w: request %d: payload of %d bytes, want 8", ErrProtocol, m.req, len(m.payload))
	}
	return binary.LittleEndian.Uint64(m.payload), nil
}

// vringState is struct vhost_vring_state.
type vringState struct{ index, num uint32 }

func (m *msg) state() (vringState, error) {
	if len(m.payload) != 8 {
		return vringState{}, fmt.Errorf("%w: request %d: payload of %d bytes, want 8", ErrProtocol, m.req, len(m.payload))
	}
	return vringState{binary.LittleEndian.Uint32(m.payload), binary.LittleEndian.Uint32(m.payload[4:])}, nil
}

// vringAddr is struct vhost_vring_addr: the ring's parts as front-end
// (QEMU process) virtual addresses.
type vringAddr struct {
	index, flags           uint32
	desc, used, avail, log uint64
}

func (m *msg) addr() (vringAddr, error) {
	if len(m.payload) != 40 {
		return vringAddr{}, fmt.Errorf("%w: SET_VRING_ADDR payload of %d bytes, want 40", ErrProtocol, len(m.payload))
	}
	p := m.payload
	le := binary.LittleEndian
	return vringAddr{index: le.Uint32(p), flags: le.Uint32(p[4:]), desc: le.Uint64(p[8:]), used: le.Uint64(p[16:]), avail: le.Uint64(p[24:]), log: le.Uint64(p[32:])}, nil
}

// region is one VhostUserMemoryRegion.
type region struct {
	gpa, size, uaddr, mmapOffset uint64
}

// memTable parses SET_MEM_TABLE's payload: nregions, padding, regions.
func (m *msg) memTable() ([]region, error) {
	p := m.payload
	if len(p) < 8 {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE payload of %d bytes", ErrProtocol, len(p))
	}
	n := binary.LittleEndian.Uint32(p)
	if n == 0 || n > maxRegions || len(p) < 8+int(n)*32 {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions in %d bytes", ErrProtocol, n, len(p))
	}
	if len(m.fds) != int(n) {
		return nil, fmt.Errorf("%w: SET_MEM_TABLE with %d regions and %d descriptors", ErrProtocol, n, len(m.fds))
	}
	out := make([]region, n)
	for i := range out {
		b := p[8+32*i:]
		le := binary.LittleEndian
		r := region{gpa: le.Uint64(b), size: le.Uint64(b[8:]), uaddr: le.Uint64(b[16:]), mmapOffset: le.Uint64(b[24:])}
		if r.size == 0 || r.size > 1<<40 || r.mmapOffset > 1<<40 || r.gpa+r.size < r.gpa || r.uaddr+r.size < r.uaddr {
			return nil, fmt.Errorf("%w: memory region %d: gpa %#x size %#x uaddr %#x offset %#x", ErrProtocol, i, r.gpa, r.size, r.uaddr, r.mmapOffset)
		}
		out[i] = r
	}
	for i := range out {
		for j := range i {
			a, b := out[i], out[j]
			if a.gpa < b.gpa+b.size && b.gpa < a.gpa+a.size {
				return nil, fmt.Errorf("%w: memory regions %d and %d overlap", ErrProtocol, j, i)
			}
		}
	}
	return out, nil
}

// reply builds a reply to req with payload.
func reply(req uint32, payload []byte) []byte {
	b := make([]byte, hdrSize, hdrSize+len(payload))
	binary.LittleEndian.PutUint32(b, req)
	binary.LittleEndian.PutUint32(b[4:], flagVersion|flagReply)
	binary.LittleEndian.PutUint32(b[8:], uint32(len(payload)))
	return append(b, payload...)
}

func replyU64(req uint32, v uint64) []byte {
	return reply(req, binary.LittleEndian.AppendUint64(nil, v))
}
