// SPDX-License-Identifier: GPL-2.0
/*
 * gatehead: links an LSM entry of its own first on
 * security_hook_heads.file_open, as LSM-list rootkits do, writing the
 * read-only head with CR0.WP cleared (rk_write_ro, from
 * tests/rootkits/rk_common.h). The kernel gate guards the heads of the
 * hooks it traps with write watchpoints and must end the VM at the head's
 * write (TestKernelGateOwnEntries); the module's entry is never called.
 */
#include <linux/lsm_hooks.h>
#include "rk_common.h"

static int gatehead_file_open(struct file *file)
{
	return 0;
}

static struct security_hook_list entry = {
	.hook = { .file_open = gatehead_file_open },
	.lsm = "gatehead",
};

static int __init gatehead_init(void)
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
	first = READ_ONCE(head->first);
	entry.head = head;
	entry.list.next = first;
	entry.list.pprev = &head->first;
	/* The head first: the write the gate must catch. */
	rk_write_ro(&head->first, &node, sizeof(node));
	if (first) {
		struct hlist_node **pprev = &entry.list.next;

		rk_write_ro(&first->pprev, &pprev, sizeof(pprev));
	}
	pr_info("gatehead: entry %px first on security_hook_heads.file_open at %px\n", &entry, head);
	return 0;
}

static void __exit gatehead_exit(void)
{
	/* Never reached in the test: the VM ends at the head's write. */
	struct hlist_node *next = entry.list.next;
	struct hlist_node **pprev = entry.list.pprev;

	rk_write_ro(pprev, &next, sizeof(next));
	if (next)
		rk_write_ro(&next->pprev, &pprev, sizeof(pprev));
}

module_init(gatehead_init);
module_exit(gatehead_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("test: a write to a list head the kernel gate guards");
