// SPDX-License-Identifier: GPL-2.0
/*
 * rk_dispatch: patches the `jmp __x64_sys_getpid` in x64_sys_call (the
 * switch dispatcher of 6.1.85+) to jump to this module, which counts the
 * call (parameter hits) and calls the handler.
 */
#include "rk_common.h"

static unsigned long hits;
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "getpid calls that went through the hook");

static long rk_dispatch_getpid(const struct pt_regs *regs);

static struct rk_dispatch patch = {
	.handler = "__x64_sys_getpid",
	.hook = rk_dispatch_getpid,
};

static long rk_dispatch_getpid(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	hits++;
	ret = patch.orig(regs);
	rk_leave();
	return ret;
}

static int __init rk_dispatch_init(void)
{
	int ret = rk_init_kallsyms();

	return ret ? ret : rk_dispatch_patch(&patch);
}

static void __exit rk_dispatch_exit(void)
{
	rk_dispatch_unpatch(&patch);
	rk_drain();
}

module_init(rk_dispatch_init);
module_exit(rk_dispatch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: x64_sys_call branch patch");
