// Package dhcpwire reads DHCP messages (RFC 2131, 2132) as they cross the
// wire: the BOOTP header checks and the walk over the option list. Both
// the project's DHCP server (vnet) and the network gate's source binding
// (gate/net) read messages from the untrusted guest with it. Hand-written:
// the few dozen lines needed are pure and bounded, where a full DHCP
// library would decode and allocate every option of every message.
package dhcpwire

import "encoding/binary"

// BOOTP opcodes.
const (
	OpRequest = 1
	OpReply   = 2
)

const (
	// FixedLen is the BOOTP header's length up to the options.
	FixedLen = 236
	// Magic is the DHCP magic cookie that starts the options.
	Magic = 0x63825363
)

// Options checks that b is a BOOTP message with opcode op, Ethernet
// hardware addresses and the DHCP magic cookie, and returns its options.
// Pure.
func Options(b []byte, op byte) (opts []byte, ok bool) {
	if len(b) < FixedLen+4 || b[0] != op || b[1] != 1 || b[2] != 6 {
		return nil, false
	}
	if binary.BigEndian.Uint32(b[FixedLen:]) != Magic {
		return nil, false
	}
	return b[FixedLen+4:], true
}

// ClientMAC returns the client hardware address (chaddr) of a message
// Options accepted.
func ClientMAC(b []byte) (mac [6]byte) {
	copy(mac[:], b[28:34])
	return mac
}

// Walk calls fn for each option in opts, up to the end option, skipping
// pads. It reports false when an option runs past the end of opts. Pure.
func Walk(opts []byte, fn func(code byte, val []byte)) bool {
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == 255 {
			break
		}
		if code == 0 {
			i++
			continue
		}
		if i+1 >= len(opts) || i+2+int(opts[i+1]) > len(opts) {
			return false
		}
		val := opts[i+2 : i+2+int(opts[i+1])]
		fn(code, val)
		i += 2 + len(val)
	}
	return true
}
