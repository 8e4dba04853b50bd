// SPDX-License-Identifier: GPL-2.0
/*
 * rk_kprobe: a kprobe on do_sys_openat2 whose pre_handler is in this
 * module: the way rootkits and stealthy loggers watch every open without
 * changing a table (the pre_handler may read and rewrite the registers).
 * This one only counts.
 */
#include <linux/kprobes.h>
#include "rk_common.h"

static unsigned long hits;
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "opens seen by the probe");

static int rk_kprobe_pre(struct kprobe *p, struct pt_regs *regs)
{
	hits++;
	return 0;
}

static struct kprobe kp = {
	.symbol_name = "do_sys_openat2",
	.pre_handler = rk_kprobe_pre,
};

static int __init rk_kprobe_init(void)
{
	int ret = register_kprobe(&kp);

	if (ret < 0) {
		pr_err("rk_kprobe: register_kprobe: %d\n", ret);
		return ret;
	}
	pr_info("rk_kprobe: probe on %s at %px\n", kp.symbol_name, kp.addr);
	return 0;
}

static void __exit rk_kprobe_exit(void)
{
	unregister_kprobe(&kp);
}

module_init(rk_kprobe_init);
module_exit(rk_kprobe_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: a kprobe with a handler in a module");
