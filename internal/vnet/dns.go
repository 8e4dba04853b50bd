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
	if len(q) < 12 || q[2]&0x80 != 0 || binary.BigEndian.Uint16(q[4:6]) != 1 {
		return nil
	}
	var name strings.Builder
	i := 12
	for {
		if i >= len(q) {
			return nil
		}
		l := int(q[i])
		if l == 0 {
			i++
			break
		}
		if l > 63 || i+1+l > len(q) || name.Len()+l > 253 {
			return nil
		}
		if name.Len() > 0 {
			name.WriteByte('.')
		}
		name.Write(q[i+1 : i+1+l])
		i += 1 + l
	}
	if i+4 > len(q) {
		return nil
	}
	qtype := binary.BigEndian.Uint16(q[i:])
	end := i + 4
	out := make([]byte, 0, end+16)
	out = append(out, q[0], q[1])
	flags := uint16(0x8400) | uint16(q[2]&0x01)<<8 // QR, AA, copy RD
	addr, ok := zone[strings.ToLower(name.String())]
	if !ok {
		flags |= 3 // NXDOMAIN
	}
	out = binary.BigEndian.AppendUint16(out, flags)
	an := uint16(0)
	if ok && qtype == 1 {
		an = 1
	}
	out = append(out, 0, 1)
	out = binary.BigEndian.AppendUint16(out, an)
	out = append(out, 0, 0, 0, 0)
	out = append(out, q[12:end]...)
	if an == 1 {
		a4 := addr.As4()
		out = append(out, 0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4)
		out = append(out, a4[:]...)
	}
	return out
}
