// Package file is gatevisor's file gate: a 9P2000.L server that serves a
// host directory to the guest (run --files NAME=HOSTDIR) and asks the
// security server about every access, attributed to the guest process
// that made it by introspection from below. It never decides itself.
//
// Where it sits:
//
//	guest process ─ read(2) ─► guest kernel 9p client (cache=none, trans=fd)
//	     │ sleeps on the request's wait queue until the reply
//	     ▼
//	virtio-serial port org.gatevisor.files.NAME ─ QEMU ─ unix socket ─► Gate.Serve
//	     decode (bounded) ─► op? ─► Attributor(tag, bytes): the task waiting
//	     for exactly this request, its creds read from guest memory
//	     ─► event{class file, op, path, subject} ─► Decider ─► allow: the host
//	     file through os.Root (no escape from HOSTDIR) │ deny: Rlerror(errno)
//
// Decided ops: open (Tlopen, args: the open flags), create (Tlcreate,
// Tmknod), read (Tread, Treadlink), write (Twrite), readdir (Treaddir),
// mkdir, unlink, rmdir (Tunlinkat, Tremove), rename (Trename, Trenameat:
// the old and the new name each), link, symlink, truncate, chmod
// (Tsetattr). Walks, getattr, statfs, fsync, flush and clunk are
// metadata and bookkeeping the guest kernel needs to reach a file; they
// are answered without a decision (a walk tells a process that a name
// exists, as a directory's mode bits already do).
//
// Fail closed: a request whose process cannot be attributed, or that no
// decider answers, is denied (EACCES) and audited as a gate failure; a
// message that does not parse closes the connection, which the guest's
// mount sees as a dead server. Everything from the guest is bounded:
// message size (msize), names, fids per connection, directory entries.
package file
