package vhostuser

import (
	"encoding/binary"
	"errors"
	"testing"
)

// fakeRing is a guest's split ring of 8 entries in a fake guest RAM at
// gpa 0x1000: descriptors at 0x1000, avail at 0x1080, used at 0x1100,
// buffers from 0x2000 on.
type fakeRing struct {
	ram []byte
	mem *Memory
}

const (
	ramBase  = 0x1000
	ringDesc = 0x1000
	ringAv   = 0x1080
	ringUsed = 0x1100
	ringN    = 8
)

func newFakeRing() *fakeRing {
	ram := make([]byte, 64<<10)
	return &fakeRing{ram: ram, mem: NewTestMemory(ramBase, ram)}
}

func (f *fakeRing) at(gpa uint64) []byte { return f.ram[gpa-ramBase:] }

func (f *fakeRing) desc(i int, addr uint64, ln uint32, flags, next uint16) {
	d := f.at(ringDesc + uint64(16*i))
	binary.LittleEndian.PutUint64(d, addr)
	binary.LittleEndian.PutUint32(d[8:], ln)
	binary.LittleEndian.PutUint16(d[12:], flags)
	binary.LittleEndian.PutUint16(d[14:], next)
}

// offer makes chain head available as the avail ring's entry idx.
func (f *fakeRing) offer(idx uint16, head uint16) {
	binary.LittleEndian.PutUint16(f.at(ringAv+4+2*uint64(idx%ringN)), head)
	binary.LittleEndian.PutUint16(f.at(ringAv+2), idx+1)
}

func TestRingChains(t *testing.T) {
	f := newFakeRing()
	r, err := setupRing(f.mem, ringN, ringDesc, ringAv, ringUsed)
	if err != nil {
		t.Fatal(err)
	}
	copy(f.at(0x2000), "hello")
	f.desc(0, 0x2000, 3, descFNext, 1)
	f.desc(1, 0x2003, 2, descFNext, 2)
	f.desc(2, 0x3000, 16, descFWrite, 0)
	f.offer(0, 0)
	if n, err := r.pending(); n != 1 || err != nil {
		t.Fatalf("pending %d %v", n, err)
	}
	var c Chain
	if err := r.next(f.mem, &c); err != nil {
		t.Fatal(err)
	}
	if len(c.In) != 2 || string(c.In[0])+string(c.In[1]) != "hello" || c.InLen != 5 || len(c.Out) != 1 || c.OutLen != 16 {
		t.Fatalf("chain %+v", c)
	}
	copy(c.Out[0], "world")
	r.put(c.head, 5)
	if got := binary.LittleEndian.Uint16(f.at(ringUsed + 2)); got != 1 {
		t.Fatalf("used idx %d", got)
	}
	if id, ln := binary.LittleEndian.Uint32(f.at(ringUsed+4)), binary.LittleEndian.Uint32(f.at(ringUsed+8)); id != 0 || ln != 5 {
		t.Fatalf("used elem %d %d", id, ln)
	}
	if string(f.at(0x3000)[:5]) != "world" {
		t.Fatal("the reply is not in guest RAM")
	}
	if n, _ := r.pending(); n != 0 {
		t.Fatalf("pending %d after the chain", n)
	}
}

func TestRingHostile(t *testing.T) {
	for _, tc := range []struct {
		name string
		set  func(f *fakeRing)
	}{
		{"outside RAM", func(f *fakeRing) { f.desc(0, 0x100000, 16, 0, 0) }},
		{"straddles the end of RAM", func(f *fakeRing) { f.desc(0, ramBase+64<<10-4, 16, 0, 0) }},
		{"a loop", func(f *fakeRing) { f.desc(0, 0x2000, 1, descFNext, 1); f.desc(1, 0x2000, 1, descFNext, 0) }},
		{"next out of the ring", func(f *fakeRing) { f.desc(0, 0x2000, 1, descFNext, 99) }},
		{"indirect", func(f *fakeRing) { f.desc(0, 0x2000, 16, descFIndirect, 0) }},
		{"readable after writable", func(f *fakeRing) {
			f.desc(0, 0x2000, 1, descFNext|descFWrite, 1)
			f.desc(1, 0x2000, 1, 0, 0)
		}},
		{"address wraps", func(f *fakeRing) { f.desc(0, ^uint64(0)-2, 16, 0, 0) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeRing()
			r, err := setupRing(f.mem, ringN, ringDesc, ringAv, ringUsed)
			if err != nil {
				t.Fatal(err)
			}
			tc.set(f)
			f.offer(0, 0)
			var c Chain
			if err := r.next(f.mem, &c); !errors.Is(err, ErrRing) {
				t.Fatalf("next: %v, want ErrRing", err)
			}
		})
	}
	f := newFakeRing()
	r, _ := setupRing(f.mem, ringN, ringDesc, ringAv, ringUsed)
	binary.LittleEndian.PutUint16(f.at(ringAv+2), ringN+1) // more than the ring holds
	if _, err := r.pending(); !errors.Is(err, ErrRing) {
		t.Fatalf("pending: %v, want ErrRing", err)
	}
	binary.LittleEndian.PutUint16(f.at(ringAv+4), 200) // a head out of the ring
	binary.LittleEndian.PutUint16(f.at(ringAv+2), 1)
	var c Chain
	if err := r.next(f.mem, &c); !errors.Is(err, ErrRing) {
		t.Fatalf("head 200: %v, want ErrRing", err)
	}
	for _, bad := range [][4]uint64{{3, ringDesc, ringAv, ringUsed}, {ringN, ringDesc + 8, ringAv, ringUsed}, {ringN, ringDesc, ringAv + 2, ringUsed}, {ringN, ringDesc, ringAv, 0x100000}, {0, ringDesc, ringAv, ringUsed}} {
		if _, err := setupRing(f.mem, uint32(bad[0]), bad[1], bad[2], bad[3]); err == nil {
			t.Errorf("setupRing%v accepted", bad)
		}
	}
}

// FuzzRing feeds arbitrary descriptor tables and avail rings: the walk
// must never panic nor hand out a buffer outside guest RAM, and a chain
// is at most the ring's size long.
func FuzzRing(f *testing.F) {
	seed := make([]byte, 16*ringN+4+2*ringN)
	binary.LittleEndian.PutUint64(seed, 0x2000)
	binary.LittleEndian.PutUint32(seed[8:], 16)
	binary.LittleEndian.PutUint16(seed[16*ringN+2:], 1)
	f.Add(seed)
	loop := append([]byte(nil), seed...)
	binary.LittleEndian.PutUint16(loop[12:], descFNext)
	f.Add(loop)
	f.Fuzz(func(t *testing.T, data []byte) {
		fr := newFakeRing()
		copy(fr.at(ringDesc), data)
		if len(data) > 16*ringN {
			copy(fr.at(ringAv), data[16*ringN:])
		}
		r, err := setupRing(fr.mem, ringN, ringDesc, ringAv, ringUsed)
		if err != nil {
			t.Fatal(err)
		}
		var c Chain
		for range 2 * ringN {
			n, err := r.pending()
			if err != nil || n == 0 {
				return
			}
			if err := r.next(fr.mem, &c); err != nil {
				return
			}
			if c.descCount > ringN {
				t.Fatalf("a chain of %d descriptors", c.descCount)
			}
			r.put(c.head, uint32(c.OutLen))
		}
	})
}
