package net

import (
	"errors"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"
)

// Kinds of frame.
const (
	KindARP  = 1
	KindIPv4 = 2
)

// IP protocol numbers the gate handles.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
)

// TCP flags.
const (
	tcpFIN = 0x01
	tcpSYN = 0x02
	tcpRST = 0x04
	tcpACK = 0x10
)

// Reasons the parser refuses a frame.
var (
	ErrRunt       = errors.New("frame shorter than an Ethernet header")
	ErrEtherType  = errors.New("ethertype not forwarded (only ARP and IPv4)")
	ErrIPv4Header = errors.New("malformed IPv4 header")
	ErrIPv4Sum    = errors.New("bad IPv4 header checksum")
	ErrFragment   = errors.New("IPv4 fragment (the gate does not reassemble)")
	ErrProtocol   = errors.New("IP protocol not forwarded (only TCP, UDP, ICMP)")
	ErrTransport  = errors.New("truncated or malformed transport header")
	ErrL4Checksum = errors.New("bad transport checksum")
	ErrARP        = errors.New("malformed ARP packet")
)

// Packet is what the gate needs of a frame. Parse fills it without
// allocating.
type Packet struct {
	Kind   uint8
	SrcMAC [6]byte
	// ARPSender and ARPSenderIP are an ARP packet's sender hardware and
	// protocol addresses.
	ARPSender   [6]byte
	ARPSenderIP netip.Addr
	Proto       uint8
	Src, Dst    netip.Addr
	// SrcPort and DstPort are the TCP/UDP ports; for ICMP echo both are
	// the echo identifier.
	SrcPort, DstPort uint16
	TCPFlags         uint8
	Seq, Ack         uint32
	Payload          int // transport payload length
	ICMPType         uint8
	ip               header.IPv4
	l4               []byte
}

// Parse classifies frame. It checks the IPv4 header checksum; transport
// checksums are checked only by VerifyTransport, on flow starts.
func Parse(frame []byte, p *Packet) error {
	if len(frame) < header.EthernetMinimumSize {
		return ErrRunt
	}
	eth := header.Ethernet(frame)
	copy(p.SrcMAC[:], frame[6:12])
	switch eth.Type() {
	case header.ARPProtocolNumber:
		a := header.ARP(frame[header.EthernetMinimumSize:])
		if !a.IsValid() {
			return ErrARP
		}
		p.Kind = KindARP
		copy(p.ARPSender[:], a.HardwareAddressSender())
		p.ARPSenderIP = netip.AddrFrom4([4]byte(a.ProtocolAddressSender()))
		return nil
	case header.IPv4ProtocolNumber:
	default:
		return ErrEtherType
	}
	ip := header.IPv4(frame[header.EthernetMinimumSize:])
	if len(ip) < header.IPv4MinimumSize || ip.HeaderLength() < header.IPv4MinimumSize ||
		int(ip.HeaderLength()) > len(ip) || ip.TotalLength() < uint16(ip.HeaderLength()) ||
		int(ip.TotalLength()) > len(ip) || ip[0]>>4 != 4 {
		return ErrIPv4Header
	}
	if checksum.Checksum(ip[:ip.HeaderLength()], 0) != 0xffff {
		return ErrIPv4Sum
	}
	if ip.More() || ip.FragmentOffset() != 0 {
		return ErrFragment
	}
	ip = ip[:ip.TotalLength()]
	p.Kind, p.ip = KindIPv4, ip
	p.Src = netip.AddrFrom4(ip.SourceAddress().As4())
	p.Dst = netip.AddrFrom4(ip.DestinationAddress().As4())
	p.Proto = ip.Protocol()
	l4 := []byte(ip[ip.HeaderLength():])
	p.l4 = l4
	p.TCPFlags, p.Seq, p.Ack, p.ICMPType = 0, 0, 0, 0
	switch p.Proto {
	case ProtoTCP:
		t := header.TCP(l4)
		if len(l4) < header.TCPMinimumSize || int(t.DataOffset()) < header.TCPMinimumSize || int(t.DataOffset()) > len(l4) {
			return ErrTransport
		}
		p.SrcPort, p.DstPort = t.SourcePort(), t.DestinationPort()
		p.TCPFlags = uint8(t.Flags())
		p.Seq, p.Ack = t.SequenceNumber(), t.AckNumber()
		p.Payload = len(l4) - int(t.DataOffset())
	case ProtoUDP:
		u := header.UDP(l4)
		if len(l4) < header.UDPMinimumSize || int(u.Length()) > len(l4) || u.Length() < header.UDPMinimumSize {
			return ErrTransport
		}
		p.SrcPort, p.DstPort = u.SourcePort(), u.DestinationPort()
		p.Payload = int(u.Length()) - header.UDPMinimumSize
	case ProtoICMP:
		if len(l4) < header.ICMPv4MinimumSize {
			return ErrTransport
		}
		ic := header.ICMPv4(l4)
		p.ICMPType = uint8(ic.Type())
		p.SrcPort, p.DstPort = 0, 0
		if p.ICMPType == uint8(header.ICMPv4Echo) || p.ICMPType == uint8(header.ICMPv4EchoReply) {
			p.SrcPort, p.DstPort = ic.Ident(), ic.Ident()
		}
		p.Payload = len(l4) - header.ICMPv4MinimumSize
	default:
		return ErrProtocol
	}
	return nil
}

// VerifyTransport checks the TCP, UDP or ICMP checksum of a parsed IPv4
// packet. A UDP checksum of zero means none (RFC 768).
func VerifyTransport(p *Packet) error {
	if p.Kind != KindIPv4 {
		return nil
	}
	switch p.Proto {
	case ProtoICMP:
		if checksum.Checksum(p.l4, 0) != 0xffff {
			return ErrL4Checksum
		}
		return nil
	case ProtoUDP:
		if header.UDP(p.l4).Checksum() == 0 {
			return nil
		}
	}
	n := len(p.l4)
	if p.Proto == ProtoUDP {
		n = int(header.UDP(p.l4).Length())
	}
	x := header.PseudoHeaderChecksum(tcpip.TransportProtocolNumber(p.Proto), p.ip.SourceAddress(), p.ip.DestinationAddress(), uint16(n))
	if checksum.Checksum(p.l4[:n], x) != 0xffff {
		return ErrL4Checksum
	}
	return nil
}
