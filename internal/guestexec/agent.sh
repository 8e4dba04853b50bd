#!/bin/sh
# gatevisor exec agent: runs operator commands sent by the monitor over the
# virtio-serial port named org.gatevisor.exec, and answers with their output
# and exit status. Protocol (one line each way, fields separated by spaces):
#   monitor -> guest: GVX1 <id> <timeout-seconds> <base64 of a sh script>
#   guest -> monitor: GVX1 <id> <exit-code> <base64 stdout> <base64 stderr>
# An empty output is sent as "-". Outputs are capped at 1 MiB each.
# This is an operator convenience; no security feature depends on it.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
port=
for d in /sys/class/virtio-ports/*; do
	[ "$(cat "$d/name" 2>/dev/null)" = org.gatevisor.exec ] && port=/dev/${d##*/}
done
if [ -z "$port" ] || [ ! -c "$port" ]; then
	sleep 5
	exit 1
fi
work=/run/gvx
mkdir -p "$work"
exec 3<>"$port"
while read -r magic id tmo cmd <&3; do
	[ "$magic" = GVX1 ] || continue
	case "$id$tmo" in *[!0-9]*) continue ;; esac
	printf '%s' "$cmd" | base64 -d >"$work/cmd" 2>/dev/null || { printf 'GVX1 %s 126 - -\n' "$id" >&3; continue; }
	(cd / && exec timeout "$tmo" sh "$work/cmd" </dev/null >"$work/out" 2>"$work/err")
	rc=$?
	out=$(head -c 1048576 "$work/out" | base64 | tr -d '\n')
	err=$(head -c 1048576 "$work/err" | base64 | tr -d '\n')
	printf 'GVX1 %s %s %s %s\n' "$id" "$rc" "${out:--}" "${err:--}" >&3
done
sleep 1
