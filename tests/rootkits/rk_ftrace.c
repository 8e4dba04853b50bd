// SPDX-License-Identifier: GPL-2.0
/*
 * rk_ftrace: the ftrace hook of modern rootkits (xcellerator's
 * ftrace_helper, Reptile, Diamorphine forks for 5.x/6.x): an ftrace_ops
 * filtered on __x64_sys_getdents64 whose callback rewrites the saved
 * instruction pointer (IPMODIFY) to this module's handler. No table entry
 * and no kernel instruction is changed by the module itself; ftrace turns
 * the function's __fentry__ nop into a call to its trampoline.
 */
#include <linux/ftrace.h>
#include "rk_common.h"

static unsigned long hits;
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "getdents64 calls that went through the hook");

static unsigned long target;
static rk_syscall_t orig;

static long rk_ftrace_getdents64(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	hits++;
	ret = orig(regs); /* its fentry sees a caller in this module and lets it through */
	rk_leave();
	return ret;
}

static void notrace rk_ftrace_thunk(unsigned long ip, unsigned long parent_ip,
				    struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (regs && !within_module(parent_ip, THIS_MODULE))
		regs->ip = (unsigned long)rk_ftrace_getdents64;
}

static struct ftrace_ops ops = {
	.func = rk_ftrace_thunk,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION | FTRACE_OPS_FL_IPMODIFY,
};

static int __init rk_ftrace_init(void)
{
	int ret = rk_init_kallsyms();

	if (ret)
		return ret;
	target = rk_sym("__x64_sys_getdents64");
	if (!target)
		return -ENOENT;
	orig = (rk_syscall_t)target;
	ret = ftrace_set_filter_ip(&ops, target, 0, 0);
	if (ret) {
		pr_err("rk_ftrace: ftrace_set_filter_ip: %d\n", ret);
		return ret;
	}
	ret = register_ftrace_function(&ops);
	if (ret) {
		pr_err("rk_ftrace: register_ftrace_function: %d\n", ret);
		ftrace_set_filter_ip(&ops, target, 1, 0);
		return ret;
	}
	pr_info("rk_ftrace: __x64_sys_getdents64 (%px) hooked\n", (void *)target);
	return 0;
}

static void __exit rk_ftrace_exit(void)
{
	unregister_ftrace_function(&ops);
	ftrace_set_filter_ip(&ops, target, 1, 0);
	rk_drain();
}

module_init(rk_ftrace_init);
module_exit(rk_ftrace_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: an ftrace hook on a syscall handler");
