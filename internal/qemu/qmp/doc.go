// Package qmp is a client for the QEMU Machine Protocol (QMP) over a unix
// socket: the greeting and capabilities handshake, commands matched to their
// responses by id, asynchronous events, and typed QMP errors.
//
// It is hand-written because the existing Go QMP code (digitalocean/go-qemu's
// qmp package, libvirt bindings) does not give what the monitor needs with no
// extra dependencies: concurrent calls matched by id, typed errors, a
// non-blocking event stream and a notice when QEMU goes away. It is small
// and treats QEMU's output as untrusted input: every line is capped at
// [MaxLineSize], malformed JSON is an error (never a panic), and a slow
// event consumer cannot stall the reader (the oldest events are dropped and
// counted instead, see [Client.DroppedEvents]).
//
// Concurrency: a Client is safe for concurrent use. One reader goroutine owns
// the connection's read side; writes are serialised by a mutex. Pending calls
// fail with an error wrapping [ErrClosed] once the connection is gone, and
// [Client.Done] is closed at that moment. This lifecycle is the one
// internal/qemu/clientconn keeps for both QEMU clients (this one and gdbrsp).
package qmp
