// SPDX-License-Identifier: GPL-2.0
/*
 * rk_sct: the classic sys_call_table hook. Three entries (kill, getdents64,
 * openat) point to handlers in this module, which count their calls and
 * call the originals. On 6.1.85+ x86-64 do_syscall_64 dispatches through
 * x64_sys_call and no longer reads the table, so these hooks are not
 * called: the table is what older rootkits patch and what the IDS checks.
 */
#include <asm/unistd.h>
#include "rk_common.h"

static unsigned long hits;
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "calls that reached a hook");

static rk_syscall_t *table;
static rk_syscall_t orig_kill, orig_getdents64, orig_openat;

static long rk_sct_kill(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	hits++;
	ret = orig_kill(regs);
	rk_leave();
	return ret;
}

static long rk_sct_getdents64(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	hits++;
	ret = orig_getdents64(regs);
	rk_leave();
	return ret;
}

static long rk_sct_openat(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	hits++;
	ret = orig_openat(regs);
	rk_leave();
	return ret;
}

static void set_entry(int nr, rk_syscall_t fn)
{
	rk_write_ro(&table[nr], &fn, sizeof(fn));
}

static int __init rk_sct_init(void)
{
	int ret = rk_init_kallsyms();

	if (ret)
		return ret;
	table = (rk_syscall_t *)rk_sym("sys_call_table");
	if (!table)
		return -ENOENT;
	orig_kill = table[__NR_kill];
	orig_getdents64 = table[__NR_getdents64];
	orig_openat = table[__NR_openat];
	set_entry(__NR_kill, rk_sct_kill);
	set_entry(__NR_getdents64, rk_sct_getdents64);
	set_entry(__NR_openat, rk_sct_openat);
	pr_info("rk_sct: sys_call_table[%d,%d,%d] hooked\n", __NR_kill, __NR_getdents64, __NR_openat);
	return 0;
}

static void __exit rk_sct_exit(void)
{
	set_entry(__NR_kill, orig_kill);
	set_entry(__NR_getdents64, orig_getdents64);
	set_entry(__NR_openat, orig_openat);
	rk_drain();
	pr_info("rk_sct: sys_call_table restored\n");
}

module_init(rk_sct_init);
module_exit(rk_sct_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: sys_call_table hooks");
