package vnet

import (
	"sync"
	"sync/atomic"
)

// MAC is an Ethernet address.
type MAC [6]byte

// Broadcast is ff:ff:ff:ff:ff:ff.
var Broadcast = MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// Port is an endpoint attached to a network: Send hands it frames to switch.
type Port interface {
	// Send switches frames. It takes ownership of them and does not block
	// on other ports: a port whose queue is full loses frames, as on a
	// real switch.
	Send(frames [][]byte)
	Close()
}

// portQueue is how many batches a port may have waiting.
const portQueue = 256

// maxMACs bounds the learning table; a guest flooding random source MACs
// makes the switch flood, not grow.
const maxMACs = 4096

// Switch is an L2 learning switch.
type Switch struct {
	mu    sync.RWMutex // guards ports and macs
	ports map[*swPort]bool
	macs  map[MAC]*swPort

	Dropped atomic.Uint64 // frames lost to full port queues or runts
}

// NewSwitch returns an empty switch.
func NewSwitch() *Switch {
	return &Switch{ports: map[*swPort]bool{}, macs: map[MAC]*swPort{}}
}

type swPort struct {
	sw      *Switch
	q       chan [][]byte
	done    chan struct{}
	once    sync.Once
	deliver func([][]byte)
}

// Attach adds a port; deliver receives the frames switched to it, in order,
// from one goroutine per port.
func (s *Switch) Attach(deliver func([][]byte)) Port {
	p := &swPort{sw: s, q: make(chan [][]byte, portQueue), done: make(chan struct{}), deliver: deliver}
	s.mu.Lock()
	s.ports[p] = true
	s.mu.Unlock()
	go p.run()
	return p
}

func (p *swPort) run() {
	for {
		select {
		case b := <-p.q:
			p.deliver(b)
		case <-p.done:
			return
		}
	}
}

func (p *swPort) Send(frames [][]byte) { p.sw.forward(p, frames) }

func (p *swPort) Close() {
	p.once.Do(func() {
		s := p.sw
		s.mu.Lock()
		delete(s.ports, p)
		for m, q := range s.macs {
			if q == p {
				delete(s.macs, m)
			}
		}
		s.mu.Unlock()
		close(p.done)
	})
}

func (p *swPort) enqueue(b [][]byte) {
	select {
	case p.q <- b:
	case <-p.done:
	default:
		p.sw.Dropped.Add(uint64(len(b)))
	}
}

// forward learns the source of each frame and switches it: known unicast
// to its port, everything else to every other port.
func (s *Switch) forward(from *swPort, frames [][]byte) {
	var out map[*swPort][][]byte
	var flood [][]byte
	s.mu.RLock()
	learn := false
	for _, f := range frames {
		if len(f) < MinFrame {
			s.Dropped.Add(1)
			continue
		}
		var dst, src MAC
		copy(dst[:], f[0:6])
		copy(src[:], f[6:12])
		if src[0]&1 == 0 && s.macs[src] != from {
			learn = true
		}
		if dst[0]&1 == 0 {
			if to, ok := s.macs[dst]; ok {
				if to != from {
					if out == nil {
						out = map[*swPort][][]byte{}
					}
					out[to] = append(out[to], f)
				}
				continue
			}
		}
		flood = append(flood, f)
	}
	if len(flood) > 0 {
		if out == nil {
			out = map[*swPort][][]byte{}
		}
		for p := range s.ports {
			if p != from {
				out[p] = append(out[p], flood...)
			}
		}
	}
	s.mu.RUnlock()
	if learn {
		s.mu.Lock()
		if s.ports[from] {
			for _, f := range frames {
				if len(f) < MinFrame || f[6]&1 != 0 {
					continue
				}
				var src MAC
				copy(src[:], f[6:12])
				if _, ok := s.macs[src]; ok || len(s.macs) < maxMACs {
					s.macs[src] = from
				}
			}
		}
		s.mu.Unlock()
	}
	for p, b := range out {
		p.enqueue(b)
	}
}
