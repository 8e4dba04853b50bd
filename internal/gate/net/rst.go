package net

import (
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// BuildRST returns the RST|ACK answering the TCP segment in frame (as parsed
// into p): addresses and ports swapped, acknowledging everything the
// segment carried, so the sender's TCP reports "connection refused".
func BuildRST(frame []byte, p *Packet) []byte {
	const hl = header.EthernetMinimumSize + header.IPv4MinimumSize + header.TCPMinimumSize
	b := make([]byte, hl)
	copy(b[0:6], frame[6:12])
	copy(b[6:12], frame[0:6])
	b[12], b[13] = 0x08, 0x00
	ip := header.IPv4(b[header.EthernetMinimumSize:])
	src, dst := tcpip.AddrFrom4(p.Dst.As4()), tcpip.AddrFrom4(p.Src.As4())
	ip.Encode(&header.IPv4Fields{TotalLength: header.IPv4MinimumSize + header.TCPMinimumSize, TTL: 64, Protocol: ProtoTCP, SrcAddr: src, DstAddr: dst})
	ip.SetChecksum(^ip.CalculateChecksum())
	ack := p.Seq + uint32(p.Payload)
	if p.TCPFlags&tcpSYN != 0 {
		ack++
	}
	if p.TCPFlags&tcpFIN != 0 {
		ack++
	}
	t := header.TCP(b[header.EthernetMinimumSize+header.IPv4MinimumSize:])
	fields := header.TCPFields{SrcPort: p.DstPort, DstPort: p.SrcPort, AckNum: ack, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagRst | header.TCPFlagAck}
	if p.TCPFlags&tcpACK != 0 {
		fields.SeqNum = p.Ack
	}
	t.Encode(&fields)
	x := header.PseudoHeaderChecksum(header.TCPProtocolNumber, src, dst, header.TCPMinimumSize)
	t.SetChecksum(^checksum.Checksum(t, x))
	return b
}
