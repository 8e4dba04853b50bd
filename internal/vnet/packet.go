package vnet

import (
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// BuildUDP returns an Ethernet frame carrying one IPv4 UDP datagram, with
// both checksums computed.
func BuildUDP(srcMAC, dstMAC MAC, src, dst netip.AddrPort, payload []byte) []byte {
	const hl = header.EthernetMinimumSize + header.IPv4MinimumSize + header.UDPMinimumSize
	b := make([]byte, hl+len(payload))
	eth := header.Ethernet(b)
	eth.Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(srcMAC[:]), DstAddr: tcpip.LinkAddress(dstMAC[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	sa, da := tcpip.AddrFrom4(src.Addr().As4()), tcpip.AddrFrom4(dst.Addr().As4())
	ulen := uint16(header.UDPMinimumSize + len(payload))
	ip.Encode(&header.IPv4Fields{TotalLength: header.IPv4MinimumSize + ulen, TTL: 64, Protocol: uint8(header.UDPProtocolNumber), SrcAddr: sa, DstAddr: da})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(b[header.EthernetMinimumSize+header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: src.Port(), DstPort: dst.Port(), Length: ulen})
	copy(u.Payload(), payload)
	x := header.PseudoHeaderChecksum(header.UDPProtocolNumber, sa, da, ulen)
	x = checksum.Checksum(u, x)
	if x = ^x; x == 0 {
		x = 0xffff
	}
	u.SetChecksum(x)
	return b
}
