// Package linux builds a Linux kernel profile with no debug package and finds
// the running kernel in guest memory.
//
// A Profile comes from the kernel image alone (the bzImage a kit boots, or a
// vmlinux): the image is decompressed (ExtractVmlinux), symbols come from the
// kernel's own compressed kallsyms tables (ParseKallsyms, located by content:
// there is no symbol table), and structure layouts from its .BTF section,
// read in place (BTF: no type graph is decoded; cilium/ebpf's btf package is
// the tests' oracle). Profiles are cached per kernel build under the user's
// cache directory, in a file used where it lies (profilecache.go): symbol
// columns mapped, BTF read with pread.
//
// Locate works out where KASLR put the kernel: the physical load address (the
// banner's bytes in physical memory) and the virtual slide (where the page
// tables map _text), verified by reading linux_banner back through the page
// tables.
//
// Like package vmi, everything here treats kernel images and guest memory as
// hostile input: every table, count and offset is bounded, and the parsers are
// fuzzed.
//
// The package has no mutable state of its own: its package-level variables
// are sentinel errors and read-only tables. What is worked out about a kernel
// after its Profile is loaded (the structure layouts the walks use, the image
// facts the system call checks compare memory with) is kept on that Profile,
// each part computed once and then only read, so that several goroutines (the
// IDS, the gates) may query one Profile at once, and two Profiles never share
// a cache. A new cache goes in the Profile's profileCache, with its own
// sync.Once; TestNoPackageState fails on a package-level variable of a sync
// or sync/atomic type.
package linux
