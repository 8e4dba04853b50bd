// Package vmi reads a guest's physical memory and translates guest virtual
// addresses through its x86-64 page tables. It has no knowledge of any guest
// operating system: package vmi/linux builds Linux kernel objects on top of it.
//
// Memory sources implement PhysicalMemory: a raw image (RawMemory), a QEMU ELF
// dump from QMP dump-guest-memory (ELFDump), and the monitor's live mapping of
// guest RAM (in internal/qemu). AddressSpace walks 4- and 5-level page tables
// from a CR3 value; an optional TranslationCache makes repeated translations
// cheap and stays correct on memory that the running guest keeps changing.
//
// Everything read from the guest is hostile: every header field, length, count
// and pointer is bounded before it is used, and list walks are limited in
// length and stop on cycles. Parsers never panic on malformed input; they are
// fuzzed with seed corpora under testdata/fuzz.
package vmi
