package vnet

import (
	"encoding/binary"
	"net/netip"
	"strings"
)

// DNSAnswer answers one DNS query for the names in zone (lower case, no
// trailing dot) and NXDOMAIN for everything else: the isolated network
// resolves only gatevisor's own names, so a guest cannot use DNS to learn
// or reach anything outside. It returns nil for input that is not a query.
func DNSAnswer(q []byte, zone map[string]netip.Addr) []byte {
	dq, ok := ParseDNSQuery(q)
	if !ok {
		return nil
	}
	addr, ok := zone[dq.Name]
	if !ok {
		return DNSReply(q, dq, nil, true)
	}
	return DNSReply(q, dq, []netip.Addr{addr}, false)
}

// DNSQuery is the question of a one-question DNS query.
type DNSQuery struct {
	Name  string // lower case, no trailing dot
	Type  uint16 // 1 is A
	Class uint16
	end   int // end of the question in the message
}

// DNSTypeA is the query type of an IPv4 address.
const DNSTypeA = 1

// ParseDNSQuery parses q's question; ok is false for anything but a
// standard query with exactly one question.
func ParseDNSQuery(q []byte) (DNSQuery, bool) {
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return DNSQuery{}, false
	}
	var name strings.Builder
	i := 12
	for {
		if i >= len(q) {
			return DNSQuery{}, false
		}
		l := int(q[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 || i+1+l > len(q) || name.Len()+l > 253 {
			return DNSQuery{}, false
		}
		if name.Len() > 0 {
			name.WriteByte('.')
		}
		name.Write(q[i+1 : i+1+l])
		i += 1 + l
	}
	if i+4 > len(q) {
		return DNSQuery{}, false
	}
	return DNSQuery{Name: strings.ToLower(name.String()), Type: binary.BigEndian.Uint16(q[i:]), Class: binary.BigEndian.Uint16(q[i+2:]), end: i + 4}, true
}

// maxDNSAnswers bounds the A records of one reply.
const maxDNSAnswers = 8

// DNSReply builds the reply to q (parsed as dq): NXDOMAIN when nx, else
// one A record per IPv4 address in addrs (at most maxDNSAnswers) when the
// query asks for A, and an empty answer otherwise.
func DNSReply(q []byte, dq DNSQuery, addrs []netip.Addr, nx bool) []byte {
	out := make([]byte, 0, dq.end+16*maxDNSAnswers)
	out = append(out, q[0], q[1])
	flags := uint16(0x8400) | uint16(q[2]&0x01)<<8 // QR, AA, copy RD
	if nx {
		flags |= 3 // NXDOMAIN
	}
	var ans [][4]byte
	if !nx && dq.Type == DNSTypeA {
		for _, a := range addrs {
			if a = a.Unmap(); a.Is4() && len(ans) < maxDNSAnswers {
				ans = append(ans, a.As4())
			}
		}
	}
	out = binary.BigEndian.AppendUint16(out, flags)
	out = append(out, 0, 1)
	out = binary.BigEndian.AppendUint16(out, uint16(len(ans)))
	out = append(out, 0, 0, 0, 0)
	out = append(out, q[12:dq.end]...)
	for _, a4 := range ans {
		out = append(out, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
		out = append(out, a4[:]...)
	}
	return out
}
