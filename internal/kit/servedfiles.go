package kit

// mountFilesScript mounts the directories the monitor serves (run
// --files NAME=HOSTDIR[:GUESTPATH][,ro][,9p]). Over virtio-fs (the
// default), the monitor names each on the kernel command line as
// gatevisor.virtiofs=NAME:GUESTPATH[:ro] and gives it a
// vhost-user-fs-pci device tagged NAME, whose backend is the monitor: the
// mount is mount -t virtiofs NAME GUESTPATH (the monitor answers every
// open with direct I/O, so no data stays in the page cache). Over 9P, it
// names it gatevisor.files=NAME:GUESTPATH[:ro] and gives it a
// virtio-serial port org.gatevisor.files.NAME; the mount is 9P2000.L over
// that port (trans=fd, relayed through two pipes), with cache=none so
// that every read and write reaches the monitor and nothing of the files
// stays in the page cache. The attach name is the share's name: the
// monitor refuses any other. The monitor refuses a virtio-fs share when
// the kit's script lacks "gatevisor.virtiofs=" (a kit built before it).
// Run at boot by rcS; with a NAME, mounts that one again (after a umount).
const mountFilesScript = `#!/bin/sh
# gatevisor guest: mount the directories the monitor serves (run --files).
only=$1
rc=0
for a in $(cat /proc/cmdline); do
	case "$a" in gatevisor.virtiofs=*) ;; *) continue ;; esac
	spec=${a#gatevisor.virtiofs=}
	name=${spec%%:*}
	rest=${spec#"$name":}
	path=${rest%%:*}
	mode=${rest#"$path"}
	[ -z "$only" ] || [ "$only" = "$name" ] || continue
	opts=
	[ "$mode" = ":ro" ] && opts=-r
	mkdir -p "$path"
	if ! out=$(mount -t virtiofs $opts "$name" "$path" 2>&1); then
		echo "gatevisor-guest: files $name: virtiofs mount on $path failed: $out" >/dev/console
		rc=1
	fi
done
for a in $(cat /proc/cmdline); do
	case "$a" in gatevisor.files=*) ;; *) continue ;; esac
	spec=${a#gatevisor.files=}
	name=${spec%%:*}
	rest=${spec#"$name":}
	path=${rest%%:*}
	mode=${rest#"$path"}
	[ -z "$only" ] || [ "$only" = "$name" ] || continue
	dev=
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "org.gatevisor.files.$name" ] && dev=/dev/${p##*/}
	done
	if [ -z "$dev" ] || [ ! -e "$dev" ]; then
		echo "gatevisor-guest: files $name: no port org.gatevisor.files.$name" >/dev/console
		rc=1
		continue
	fi
	# The 9p client writes with kernel_write, which a virtio-serial port
	# does not take (its driver has no write_iter: "kernel write not
	# supported"); so the client talks to two pipes, and two cat
	# processes copy between them and the port.
	d=/run/gatevisor-files
	mkdir -p -m 700 $d
	rm -f "$d/$name.in" "$d/$name.out"
	mkfifo -m 600 "$d/$name.in" "$d/$name.out"
	# A port takes one open at a time: both cats share one descriptor.
	exec 6<>"$dev"
	cat <&6 3<>"$d/$name.in" >"$d/$name.in" &
	cat "$d/$name.out" 3<>"$d/$name.out" >&6 &
	exec 6>&-
	opts=trans=fd,rfdno=4,wfdno=5,version=9p2000.L,cache=none,msize=131072,aname=$name
	[ "$mode" = ":ro" ] && opts=$opts,ro
	mkdir -p "$path"
	# Read-only and write-only: the client registers for wakeups on at
	# most two wait queues, and a pipe open for both would take both for
	# itself (the .out pipe's writer wakeup lost: a write over 64 KiB
	# then stalls for ever).
	if ! out=$(mount -t 9p -o "$opts" "gatevisor-$name" "$path" 4<"$d/$name.in" 5>"$d/$name.out" 2>&1); then
		echo "gatevisor-guest: files $name: mount on $path failed: $out" >/dev/console
		rc=1
	fi
done
exit $rc
`
