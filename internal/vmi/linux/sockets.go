package linux

// Socket is one open socket and the process holding it.
type Socket struct {
	// Family is "inet", "inet6" or "unix" (or "family N").
	Family string `json:"family"`
	// Proto is "tcp", "udp", "raw", "unix"...
	Proto      string `json:"proto"`
	LocalAddr  string `json:"local_addr"`
	LocalPort  int    `json:"local_port"`
	RemoteAddr string `json:"remote_addr"`
	RemotePort int    `json:"remote_port"`
	// State is the TCP state ("LISTEN", "ESTABLISHED"...), or "".
	State string `json:"state"`
	// Inode is the socket's inode number, as in /proc/PID/fd.
	Inode uint64 `json:"inode"`
	PID   int    `json:"pid"`
	Comm  string `json:"comm"`
	// Addr is the struct sock's kernel virtual address.
	Addr uint64 `json:"addr"`
}

// Sockets lists the sockets in the file tables of tasks.
func (k *Kernel) Sockets(tasks []Task) ([]Socket, error) { return nil, ErrNotImplemented }
