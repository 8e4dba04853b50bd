// Package vhostuser is the backend side of the vhost-user protocol
// (QEMU docs/interop/vhost-user.rst) for one device with split
// virtqueues: the monitor serves a vhost-user-fs-pci device itself, with
// no virtiofsd. It is hand-written: no maintained Go library of the
// protocol exists (the ones found are unmaintained forks of a vDPA
// experiment), and the subset a vhost-user-fs device needs is small.
//
// Where it sits:
//
//	QEMU ── unix socket (messages + SCM_RIGHTS fds) ──► Serve: features,
//	    memory table (memfd regions mmapped here), vring addresses,
//	    kick/call eventfds, start/stop
//	guest driver ── avail ring ── kick eventfd ──► queue worker: descriptor
//	    chain (bounds-checked in the memory table) ─► Handler.Handle(chain)
//	    ─► used ring ─► call eventfd ──► guest interrupt
//
// Negotiated, and nothing else: VIRTIO_F_VERSION_1 and
// VHOST_USER_F_PROTOCOL_FEATURES; protocol features MQ (GET_QUEUE_NUM)
// and REPLY_ACK. No indirect descriptors, event index, packed rings,
// IOMMU, dirty logging (so no migration), or backend requests.
//
// The guest is hostile: every ring index is reduced modulo the ring's
// size, every descriptor's address and length must lie inside one mapped
// region, a chain is at most the ring's size long (so a loop ends), its
// buffers total at most MaxChainBytes, and a malformed chain stops the
// queue (the device is then broken for the guest, as the virtio spec
// allows: NEEDS_RESET) instead of touching anything outside guest RAM.
// The front end (QEMU) is trusted as the monitor's own child, but its
// messages are still bounded and checked: a bad one ends the connection.
//
// unsafe only in *_unsafe.go.
package vhostuser
