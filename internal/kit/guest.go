package kit

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/gatevisor/gatevisor/internal/guestexec"
	"github.com/gatevisor/gatevisor/internal/kit/initramfs"
)

// The guest's users. The unprivileged user's password is "user": a
// deliberately weak, documented demo credential for the telnet service (the
// Mirai-era attack surface the monitor is meant to watch). root has no
// password and cannot log in over telnet; the console shell is root.
const (
	guestPasswd = "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n"
	guestGroup  = "root:x:0:\ntty:x:5:\nuser:x:1000:\n"
	guestShadow = "root:!:19000:0:99999:7:::\n" +
		"user:$6$gatevisordemo$z7XiaCWJnIydHCjrkciwts64x6jNJR1O4yQSdiYb.dVcYQXeujK6X1PoPLk6glhYi0jCzkoY94bguV7ZDOXwq1:19000:0:99999:7:::\n"
)

const inittab = `# gatevisor guest: busybox init configuration.
::sysinit:/etc/init.d/rcS
::respawn:/sbin/gatevisor-agent
%s::respawn:-/bin/sh
::ctrlaltdel:/bin/poweroff
::shutdown:/etc/init.d/rcK
`

// rcSHead is the start of the sysinit script; module loading and the
// services follow (see rcS).
const rcSHead = `#!/bin/sh
# gatevisor guest: system initialization, run once by busybox init.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
say() { echo "gatevisor-guest: $*" >/dev/console; }

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o nosuid,noexec,gid=5,mode=0620,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o nosuid,nodev,mode=0755 tmpfs /run
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs /tmp
hostname -F /etc/hostname

# Kernel modules, dependencies first (order computed from each module's
# .modinfo depends= when the kit was built).
failed=0
load() {
	if ! out=$(insmod "/lib/modules/$(uname -r)/$2" 2>&1); then
		say "module $1 failed to load: $out"
		failed=$((failed + 1))
	fi
}
`

const rcSTail = `[ "$failed" -eq 0 ] || say "$failed kernel module(s) failed to load, see above"

# Network: loopback, then every ethN with a brief DHCP attempt in the background.
ip addr add 127.0.0.1/8 dev lo 2>/dev/null
ip link set lo up
for d in /sys/class/net/eth*; do
	[ -e "$d" ] || continue
	n=${d##*/}
	ip link set "$n" up
	udhcpc -i "$n" -n -q -t 3 -T 1 -s /usr/share/udhcpc/default.script >/dev/null 2>&1 &
done

# ACPI power button (QMP system_powerdown) -> /etc/acpi/PWRF/00000080 -> poweroff.
acpid -l /run/acpid.log || say "acpid failed to start: power button will not work"

# The demo device workload: a web interface and a telnet service.
httpd -p 80 -h /www || say "httpd failed to start"
telnetd -p 23 -l /bin/login || say "telnetd failed to start"

# Directories the monitor serves (run --files): virtio-fs, or 9P over virtio-serial.
grep -qE 'gatevisor[.](files|virtiofs)=' /proc/cmdline && /sbin/gatevisor-mount-files

# The device's own start-up, if it ships one (run --add ./rc.local:/etc/rc.local).
if [ -x /etc/rc.local ]; then
	/etc/rc.local || say "/etc/rc.local failed with status $?"
fi

say ready
`

const rcK = `#!/bin/sh
# gatevisor guest: run by busybox init before it powers off or reboots.
echo "gatevisor-guest: shutting down" >/dev/console
sync
exit 0
`

const powerButton = `#!/bin/sh
# Run by acpid for the ACPI power button event (PWRF 00000080).
echo "gatevisor-guest: power button pressed, powering off" >/dev/console
exec poweroff
`

const udhcpcScript = `#!/bin/sh
# udhcpc event script: configure the interface from the lease.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ip addr add "$ip/${mask:-24}" dev "$interface"
	if [ -n "$router" ]; then
		ip route del default dev "$interface" 2>/dev/null
		for r in $router; do
			ip route add default via "$r" dev "$interface" && break
		done
	fi
	: >/etc/resolv.conf
	[ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
	;;
esac
exit 0
`

const profile = `export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export PS1='\u@\h:\w\$ '
umask 022
`

const indexHTML = `<!doctype html>
<html><head><title>gatevisor demo device</title></head>
<body><h1>gatevisor demo device</h1>
<p>A small Linux device (busybox httpd and telnetd) running under the gatevisor monitor.</p>
</body></html>
`

// rcS returns the sysinit script for the given module load order.
func rcS(mods []Module, release string) string {
	var b strings.Builder
	b.WriteString(rcSHead)
	for _, m := range mods {
		rel := strings.TrimPrefix(m.Path, "lib/modules/"+release+"/")
		fmt.Fprintf(&b, "load %s %s\n", m.Name, rel)
	}
	b.WriteString(rcSTail)
	return b.String()
}

// guestTree is everything that goes into the base initramfs.
type guestTree struct {
	console string // the serial console's tty ("" is ttyS0)
	release string
	busybox []byte
	applets []string
	modules []Module
	modData map[string][]byte // by module name, the file content
}

// write writes the tree to w, parents before children.
func (g *guestTree) write(w *initramfs.Writer) error {
	dirs := []struct {
		name string
		perm uint32
	}{
		{"bin", 0o755}, {"sbin", 0o755}, {"usr", 0o755}, {"usr/bin", 0o755}, {"usr/sbin", 0o755},
		{"usr/share", 0o755}, {"usr/share/udhcpc", 0o755},
		{"etc", 0o755}, {"etc/init.d", 0o755}, {"etc/acpi", 0o755}, {"etc/acpi/PWRF", 0o755},
		{"dev", 0o755}, {"proc", 0o555}, {"sys", 0o555}, {"run", 0o755}, {"tmp", 0o1777},
		{"root", 0o700}, {"home", 0o755}, {"lib", 0o755}, {"var", 0o755}, {"www", 0o755},
	}
	for _, d := range dirs {
		if err := w.Dir(d.name, d.perm); err != nil {
			return err
		}
	}
	if err := w.WriteHeader(initramfs.Header{Name: "home/user", Mode: initramfs.TypeDir | 0o755, UID: 1000, GID: 1000}); err != nil {
		return err
	}
	// The kernel opens /dev/console for init before devtmpfs is mounted.
	if err := w.CharDev("dev/console", 0o600, 5, 1); err != nil {
		return err
	}
	if err := w.File("bin/busybox", 0o755, 0, 0, g.busybox); err != nil {
		return err
	}
	for _, a := range g.applets {
		if err := w.Symlink("bin/"+a, "busybox"); err != nil {
			return err
		}
	}
	links := [][2]string{
		{"init", "bin/busybox"},
		{"sbin/init", "../bin/busybox"},
		{"usr/bin/env", "../../bin/busybox"},
		{"var/run", "../run"},
		{"var/tmp", "../tmp"},
	}
	for _, l := range links {
		if err := w.Symlink(l[0], l[1]); err != nil {
			return err
		}
	}
	files := []struct {
		name string
		perm uint32
		data string
	}{
		{"etc/passwd", 0o644, guestPasswd},
		{"etc/group", 0o644, guestGroup},
		{"etc/shadow", 0o600, guestShadow},
		{"etc/shells", 0o644, "/bin/sh\n/bin/ash\n"},
		{"etc/hostname", 0o644, "gatevisor-guest\n"},
		{"etc/hosts", 0o644, "127.0.0.1\tlocalhost gatevisor-guest\n"},
		{"etc/profile", 0o644, profile},
		{"etc/inittab", 0o644, g.inittab()},
		{"etc/init.d/rcS", 0o755, rcS(g.modules, g.release)},
		{"etc/init.d/rcK", 0o755, rcK},
		{"etc/acpi/PWRF/00000080", 0o755, powerButton},
		{"usr/share/udhcpc/default.script", 0o755, udhcpcScript},
		{"www/index.html", 0o644, indexHTML},
		{"sbin/gatevisor-agent", 0o755, guestexec.AgentScript},
		{"sbin/gatevisor-mount-files", 0o755, mountFilesScript},
	}
	for _, f := range files {
		if err := w.File(f.name, f.perm, 0, 0, []byte(f.data)); err != nil {
			return err
		}
	}
	for _, m := range g.modules {
		data, ok := g.modData[m.Name]
		if !ok {
			return fmt.Errorf("kit: module %s has no content", m.Name)
		}
		if err := w.MkdirAll(parentDir(m.Path)); err != nil {
			return err
		}
		if err := w.File(m.Path, 0o644, 0, 0, data); err != nil {
			return err
		}
	}
	if err := w.File("lib/modules/"+g.release+"/modules.dep", 0o644, 0, 0, modulesDep(g.modules, g.release)); err != nil {
		return err
	}
	return w.Close()
}

func parentDir(p string) string {
	if i := strings.LastIndexByte(p, '/'); i > 0 {
		return p[:i]
	}
	return "."
}

// modulesDep writes a modules.dep for the included modules, so that
// modprobe works in the guest: each line lists a module and all modules it
// needs, transitively, in the order modprobe unwinds them (last loaded first).
func modulesDep(mods []Module, release string) []byte {
	prefix := "lib/modules/" + release + "/"
	path := map[string]string{}
	deps := map[string][]string{}
	for _, m := range mods {
		path[m.Name] = strings.TrimPrefix(m.Path, prefix)
		deps[m.Name] = m.Depends
	}
	var b bytes.Buffer
	for _, m := range mods {
		// Transitive closure, in reverse load order.
		need := map[string]bool{}
		var walk func(n string)
		walk = func(n string) {
			for _, d := range deps[n] {
				if _, ok := path[d]; ok && !need[d] {
					need[d] = true
					walk(d)
				}
			}
		}
		walk(m.Name)
		fmt.Fprintf(&b, "%s:", path[m.Name])
		for i := len(mods) - 1; i >= 0; i-- {
			if need[mods[i].Name] {
				fmt.Fprintf(&b, " %s", path[mods[i].Name])
			}
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// busyboxApplets finds the applet names compiled into a busybox binary: the
// sorted, NUL-separated applet_names table, which starts with "[" and "[[".
// It reads the binary, it does not run it.
func busyboxApplets(bin []byte) ([]string, error) {
	// The table starts "[\0[[\0" (after a NUL in bookworm's 1.35, after
	// another byte in trixie's 1.37): the first place where a sorted run of
	// applet names follows is it.
	marker := []byte("[\x00[[\x00")
	found, longest := false, 0
	for off := 0; ; {
		i := bytes.Index(bin[off:], marker)
		if i < 0 {
			break
		}
		found = true
		names := appletRun(bin[off+i:])
		if len(names) >= 20 {
			out := names[:0]
			for _, n := range names {
				if n != "busybox" {
					out = append(out, n)
				}
			}
			return out, nil
		}
		longest = max(longest, len(names))
		off += i + 1
	}
	if !found {
		return nil, errors.New("kit: busybox: applet table not found")
	}
	return nil, fmt.Errorf("kit: busybox: applet table has only %d names", longest)
}

// appletRun reads the sorted run of NUL-terminated applet names at rest.
func appletRun(rest []byte) []string {
	var names []string
	prev := ""
	for len(names) < 2000 {
		i := bytes.IndexByte(rest, 0)
		if i <= 0 || i > 64 {
			break
		}
		n := string(rest[:i])
		if !validApplet(n) || n <= prev {
			break
		}
		names = append(names, n)
		prev = n
		rest = rest[i+1:]
	}
	return names
}

func validApplet(n string) bool {
	if n == "[" || n == "[[" {
		return true
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return n != "." && n != ".."
}

// inittab is init's configuration, its shell on the kit's serial console.
func (g *guestTree) inittab() string {
	tty := g.console
	if tty == "" {
		tty = "ttyS0"
	}
	return fmt.Sprintf(inittab, tty)
}
