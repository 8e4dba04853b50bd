package linux

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strconv"

	"github.com/gatevisor/gatevisor/internal/vmi"
)

// Socket is one open socket and the process holding it.
type Socket struct {
	// Family is "inet", "inet6", "unix", "netlink", "packet" or "family N".
	Family string `json:"family"`
	// Proto is "tcp", "udp", "udplite", "icmp", "raw", "sctp", "mptcp",
	// "unix", "netlink", "packet", or "proto N".
	Proto      string `json:"proto"`
	LocalAddr  string `json:"local_addr"`
	LocalPort  int    `json:"local_port"`
	RemoteAddr string `json:"remote_addr"`
	RemotePort int    `json:"remote_port"`
	// State is the TCP state ("LISTEN", "ESTABLISHED"...) of TCP and unix
	// stream sockets, "ESTABLISHED" for connected datagram sockets, else "".
	State string `json:"state"`
	// Inode is the socket's inode number, as in /proc/PID/fd.
	Inode uint64 `json:"inode"`
	PID   int    `json:"pid"`
	Comm  string `json:"comm"`
	// FD is the descriptor the process holds it on: a socket held on
	// several descriptors (dup2 onto 0 and 1) is listed once per descriptor.
	FD int `json:"fd"`
	// Addr is the struct sock's kernel virtual address.
	Addr uint64 `json:"addr"`
}

// ScanStats counts what a listing of guest objects skipped. Live memory
// changes under the reader, so an entry caught mid-update is skipped rather
// than failing the listing; the counts say how much was skipped.
type ScanStats struct {
	// Skipped counts entries (a process's file table, an fd slot, a socket)
	// that could not be read or were inconsistent.
	Skipped int `json:"skipped"`
	// Truncated counts tables cut at a bound (maxFDs descriptors).
	Truncated int `json:"truncated"`
	// FirstError describes the first skipped entry.
	FirstError string `json:"first_error,omitempty"`
}

func (s *ScanStats) skip(n int, err error) {
	s.Skipped += n
	if s.FirstError == "" && err != nil {
		s.FirstError = err.Error()
	}
}

// Address families, socket types and protocols (include/linux/socket.h,
// include/linux/net.h, include/uapi/linux/in.h).
const (
	afUnix    = 1
	afInet    = 2
	afInet6   = 10
	afNetlink = 16
	afPacket  = 17

	sockStream    = 1
	sockDgram     = 2
	sockRaw       = 3
	sockSeqpacket = 5
)

var familyNames = map[uint16]string{afUnix: "unix", afInet: "inet", afInet6: "inet6", afNetlink: "netlink", afPacket: "packet"}

var protoNames = map[uint16]string{1: "icmp", 6: "tcp", 17: "udp", 58: "icmp", 132: "sctp", 136: "udplite", 255: "raw", 262: "mptcp"}

// tcpStates names enum tcp_state's values (include/net/tcp_states.h).
var tcpStates = [...]string{1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
	6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING",
	12: "NEW_SYN_RECV", 13: "BOUND_INACTIVE"}

const (
	tcpEstablished = 1
	tcpClose       = 7
)

// sockLayout holds the BTF offsets of struct socket and struct sock.
type sockLayout struct {
	err error

	socketType, socketFile, socketSk                                uint64
	family, state, rcvSaddr, daddr, num, dport, v6Daddr, v6RcvSaddr uint64
	// protocol and sockType are struct sock's sk_protocol and sk_type;
	// hasProtocol is false where they are bitfields (before 5.6) and the
	// protocol is inferred from the socket type.
	protocol, sockType uint64
	hasProtocol        bool
	hasV6              bool
	// sockBlock is how many bytes of struct sock one read covers.
	sockBlock uint64
	// unix_sock.addr -> unix_address.len and .name (a struct sockaddr_un).
	unixAddr, unixLen, unixName uint64
	hasUnix                     bool
}

// layoutForSockets returns p's socket layout, computed on first use (see
// profileCache.sockets).
func layoutForSockets(p *Profile) *sockLayout {
	c := p.caches()
	c.socketsOnce.Do(func() { c.sockets = newSockLayout(p) })
	return c.sockets
}

func newSockLayout(p *Profile) *sockLayout {
	l := &sockLayout{}
	field := func(dst *uint64, path string) bool {
		off, err := p.FieldOffset(path)
		if err != nil {
			if l.err == nil {
				l.err = err
			}
			return false
		}
		*dst = off
		return true
	}
	var common uint64
	field(&l.socketType, "socket.type")
	field(&l.socketFile, "socket.file")
	field(&l.socketSk, "socket.sk")
	field(&common, "sock.__sk_common")
	for _, f := range []struct {
		dst  *uint64
		path string
	}{
		{&l.family, "sock_common.skc_family"},
		{&l.state, "sock_common.skc_state"},
		{&l.rcvSaddr, "sock_common.skc_rcv_saddr"},
		{&l.daddr, "sock_common.skc_daddr"},
		{&l.num, "sock_common.skc_num"},
		{&l.dport, "sock_common.skc_dport"},
	} {
		if field(f.dst, f.path) {
			*f.dst += common
		}
	}
	// Optional: IPv6 (CONFIG_IPV6), sk_protocol as a plain field, unix sockets.
	opt := func(dst *uint64, path string) bool {
		off, err := p.FieldOffset(path)
		*dst = off
		return err == nil
	}
	l.hasV6 = opt(&l.v6Daddr, "sock_common.skc_v6_daddr") && opt(&l.v6RcvSaddr, "sock_common.skc_v6_rcv_saddr")
	l.v6Daddr += common
	l.v6RcvSaddr += common
	l.hasProtocol = opt(&l.protocol, "sock.sk_protocol") && opt(&l.sockType, "sock.sk_type")
	l.hasUnix = opt(&l.unixAddr, "unix_sock.addr") && opt(&l.unixLen, "unix_address.len") && opt(&l.unixName, "unix_address.name")
	l.sockBlock = max(l.family+2, l.state+1, l.rcvSaddr+4, l.daddr+4, l.num+2, l.dport+2)
	if l.hasV6 {
		l.sockBlock = max(l.sockBlock, l.v6Daddr+16, l.v6RcvSaddr+16)
	}
	if l.hasProtocol {
		l.sockBlock = max(l.sockBlock, l.protocol+2, l.sockType+2)
	}
	return l
}

// Sockets lists the sockets in the file tables of tasks (processes; threads
// sharing a file table are listed once, under the first task holding it).
// Entries that cannot be read or are inconsistent are skipped;
// SocketsWithStats counts them.
func (k *Kernel) Sockets(tasks []Task) ([]Socket, error) {
	s, _, err := k.SocketsWithStats(tasks)
	return s, err
}

// SocketsWithStats is Sockets, also returning what it skipped.
//
// For each task it walks task->files->fdt->fd[] (at most maxFDs slots),
// recognises socket files by file->f_op == &socket_file_ops, and reads
// file->private_data (struct socket) -> sk (struct sock). A socket is
// accepted only if socket->file points back at the file. The result is
// sorted by PID, then descriptor.
func (k *Kernel) SocketsWithStats(tasks []Task) ([]Socket, ScanStats, error) {
	var st ScanStats
	if k.Profile.Is32() {
		return nil, st, ErrNot32
	}
	fl := layoutForFiles(k.Profile)
	if fl.err != nil {
		return nil, st, fl.err
	}
	sl := layoutForSockets(k.Profile)
	if sl.err != nil {
		return nil, st, sl.err
	}
	ops, err := k.Addr("socket_file_ops")
	if err != nil {
		return nil, st, err
	}
	var out []Socket
	seenFiles := map[uint64]bool{}
	sockBuf := make([]byte, sl.sockBlock)
	socketBuf := make([]byte, max(sl.socketType+2, sl.socketFile+8, sl.socketSk+8))
	le := binary.LittleEndian
	for _, t := range tasks {
		if t.KernelThread || !k.kernelPointer(t.Addr) {
			continue
		}
		files, err := k.filesOf(fl, t.Addr)
		if err != nil {
			st.skip(1, err)
			continue
		}
		if files == 0 || seenFiles[files] {
			continue
		}
		seenFiles[files] = true
		bad, truncated, err := k.walkFiles(fl, files, func(f openFile) {
			if f.op != ops {
				return
			}
			s, err := k.readSocket(sl, fl, f, socketBuf, sockBuf, le)
			if err != nil {
				st.skip(1, fmt.Errorf("linux: pid %d fd %d: %w", t.PID, f.fd, err))
				return
			}
			s.PID, s.Comm, s.FD = t.PID, t.Comm, f.fd
			out = append(out, s)
		})
		if err != nil {
			st.skip(1, fmt.Errorf("linux: pid %d: %w", t.PID, err))
			continue
		}
		if bad > 0 {
			st.skip(bad, fmt.Errorf("linux: pid %d: %d unreadable fd slots", t.PID, bad))
		}
		if truncated {
			st.Truncated++
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].PID != out[j].PID {
			return out[i].PID < out[j].PID
		}
		return out[i].FD < out[j].FD
	})
	return out, st, nil
}

// readSocket reads the struct socket and struct sock behind a socket file.
func (k *Kernel) readSocket(sl *sockLayout, fl *fileLayout, f openFile, socketBuf, sockBuf []byte, le binary.ByteOrder) (Socket, error) {
	var s Socket
	if !k.kernelPointer(f.priv) {
		return s, fmt.Errorf("socket file %#x: private_data %#x is not a kernel pointer", f.addr, f.priv)
	}
	if _, err := k.AS.ReadVirtual(f.priv, socketBuf); err != nil {
		return s, fmt.Errorf("struct socket %#x: %w", f.priv, err)
	}
	if back := le.Uint64(socketBuf[sl.socketFile:]); back != f.addr {
		return s, fmt.Errorf("struct socket %#x: file %#x does not point back at %#x", f.priv, back, f.addr)
	}
	sockType := le.Uint16(socketBuf[sl.socketType:])
	sk := le.Uint64(socketBuf[sl.socketSk:])
	if ino, err := k.inodeNumber(fl, f.ino); err == nil {
		s.Inode = ino
	}
	if sk == 0 {
		// A socket being created or released has no sock yet or any more.
		return s, fmt.Errorf("struct socket %#x has no sock", f.priv)
	}
	if !k.kernelPointer(sk) {
		return s, fmt.Errorf("struct socket %#x: sk %#x is not a kernel pointer", f.priv, sk)
	}
	if _, err := k.AS.ReadVirtual(sk, sockBuf); err != nil {
		return s, fmt.Errorf("struct sock %#x: %w", sk, err)
	}
	s.Addr = sk
	family := le.Uint16(sockBuf[sl.family:])
	state := sockBuf[sl.state]
	var proto uint16
	if sl.hasProtocol {
		proto = le.Uint16(sockBuf[sl.protocol:])
		if st := le.Uint16(sockBuf[sl.sockType:]); st != sockType {
			return s, fmt.Errorf("struct sock %#x: sk_type %d differs from the socket's type %d", sk, st, sockType)
		}
	}
	s.Family = familyNames[family]
	if s.Family == "" {
		s.Family = "family " + strconv.Itoa(int(family))
	}
	switch family {
	case afInet, afInet6:
		s.Proto = inetProto(proto, sockType, sl.hasProtocol)
		s.LocalPort = int(le.Uint16(sockBuf[sl.num:]))
		s.RemotePort = int(binary.BigEndian.Uint16(sockBuf[sl.dport:]))
		if family == afInet || !sl.hasV6 {
			s.LocalAddr = netip.AddrFrom4([4]byte(sockBuf[sl.rcvSaddr : sl.rcvSaddr+4])).String()
			s.RemoteAddr = netip.AddrFrom4([4]byte(sockBuf[sl.daddr : sl.daddr+4])).String()
		} else {
			s.LocalAddr = netip.AddrFrom16([16]byte(sockBuf[sl.v6RcvSaddr : sl.v6RcvSaddr+16])).String()
			s.RemoteAddr = netip.AddrFrom16([16]byte(sockBuf[sl.v6Daddr : sl.v6Daddr+16])).String()
		}
		s.State = socketState(s.Proto == "tcp" || s.Proto == "mptcp" || s.Proto == "sctp", state)
	case afUnix:
		s.Proto = "unix"
		s.State = socketState(sockType == sockStream || sockType == sockSeqpacket, state)
		if sl.hasUnix {
			s.LocalAddr = k.unixPath(sl, sk)
		}
	case afNetlink, afPacket:
		s.Proto = s.Family
	default:
		s.Proto = "proto " + strconv.Itoa(int(proto))
	}
	return s, nil
}

// inetProto names an inet socket's protocol.
func inetProto(proto, sockType uint16, known bool) string {
	if sockType == sockRaw {
		return "raw"
	}
	if known {
		if n, ok := protoNames[proto]; ok {
			return n
		}
		return "proto " + strconv.Itoa(int(proto))
	}
	switch sockType {
	case sockStream:
		return "tcp"
	case sockDgram:
		return "udp"
	}
	return "type " + strconv.Itoa(int(sockType))
}

// socketState names skc_state: every state for connection-oriented
// sockets, only ESTABLISHED (connected) for datagram ones.
func socketState(connOriented bool, state uint8) string {
	if !connOriented {
		if state == tcpEstablished {
			return "ESTABLISHED"
		}
		return ""
	}
	if int(state) < len(tcpStates) && tcpStates[state] != "" {
		return tcpStates[state]
	}
	return "state " + strconv.Itoa(int(state))
}

// unixPath reads a unix socket's bound path ("@name" for the abstract
// namespace), or "" if it is unbound or unreadable.
func (k *Kernel) unixPath(sl *sockLayout, sk uint64) string {
	addr, err := vmi.ReadU64(k.AS, sk+sl.unixAddr)
	if err != nil || addr == 0 || !k.kernelPointer(addr) {
		return ""
	}
	n, err := vmi.ReadU32(k.AS, addr+sl.unixLen)
	// len counts sun_family (2 bytes) and the path; sun_path is 108 bytes.
	const sunPath = 108
	if err != nil || n <= 2 || n > 2+sunPath {
		return ""
	}
	b := make([]byte, n)
	if _, err := k.AS.ReadVirtual(addr+sl.unixName, b); err != nil {
		return ""
	}
	path := b[2:]
	if path[0] == 0 {
		return "@" + printable(path[1:])
	}
	for i, c := range path {
		if c == 0 {
			path = path[:i]
			break
		}
	}
	return printable(path)
}

// printable quotes bytes that are not printable ASCII, so a guest-chosen
// name cannot inject control characters into a table or log.
func printable(b []byte) string {
	for _, c := range b {
		if c < 0x20 || c >= 0x7f {
			q := strconv.QuoteToASCII(string(b))
			return q[1 : len(q)-1]
		}
	}
	return string(b)
}
