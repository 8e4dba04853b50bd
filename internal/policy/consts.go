package policy

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// errnos are the Linux errno names (x86-64 and the generic ABI share
// them), from golang.org/x/sys/unix's table, plus the aliases the C library
// defines (EWOULDBLOCK, EDEADLOCK, ENOTSUP).
var errnos = func() map[string]int32 {
	m := map[string]int32{}
	for n := 1; n < 4096; n++ {
		if name := unix.ErrnoName(syscall.Errno(n)); name != "" {
			m[name] = int32(n)
		}
	}
	for alias, of := range map[string]string{"EWOULDBLOCK": "EAGAIN", "EDEADLOCK": "EDEADLK", "ENOTSUP": "EOPNOTSUPP"} {
		if v, ok := m[of]; ok {
			m[alias] = v
		}
	}
	return m
}()

// ErrnoName returns the name of a Linux errno, or "" if unknown.
func ErrnoName(n int32) string {
	if n <= 0 || n >= 4096 {
		return ""
	}
	return unix.ErrnoName(syscall.Errno(n))
}

// constants are names usable as values in argument constraints.
var constants = map[string]int64{
	"O_RDONLY": 0, "O_WRONLY": 0o1, "O_RDWR": 0o2, "O_ACCMODE": 0o3, "O_CREAT": 0o100,
	"O_EXCL": 0o200, "O_TRUNC": 0o1000, "O_APPEND": 0o2000, "O_NONBLOCK": 0o4000,
	"O_DIRECTORY": 0o200000, "O_NOFOLLOW": 0o400000, "O_CLOEXEC": 0o2000000,
	"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17,
	"SOCK_STREAM": 1, "SOCK_DGRAM": 2, "SOCK_RAW": 3,
	"PTRACE_TRACEME": 0, "PTRACE_PEEKDATA": 2, "PTRACE_POKETEXT": 4, "PTRACE_POKEDATA": 5,
	"PTRACE_ATTACH": 16, "PTRACE_SEIZE": 0x4206,
	"SIGKILL": 9, "SIGTERM": 15, "SIGSTOP": 19,
	"PROT_EXEC": 4, "PROT_WRITE": 2, "PROT_READ": 1,
}

// builtinSigs name the arguments of common syscalls, by register position.
// A parameter named path (or of type Path/String) is matched against the
// event's decoded Path.
var builtinSigs = map[string][]string{
	"open":          {"path", "flags", "mode"},
	"openat":        {"dirfd", "path", "flags", "mode"},
	"creat":         {"path", "mode"},
	"execve":        {"path", "argv", "envp"},
	"execveat":      {"dirfd", "path", "argv", "envp", "flags"},
	"unlink":        {"path"},
	"unlinkat":      {"dirfd", "path", "flags"},
	"chmod":         {"path", "mode"},
	"fchmodat":      {"dirfd", "path", "mode"},
	"chown":         {"path", "owner", "group"},
	"mkdir":         {"path", "mode"},
	"mount":         {"source", "path", "fstype", "flags", "data"},
	"umount2":       {"path", "flags"},
	"socket":        {"domain", "type", "protocol"},
	"connect":       {"fd", "addr", "addrlen"},
	"bind":          {"fd", "addr", "addrlen"},
	"listen":        {"fd", "backlog"},
	"accept":        {"fd", "addr", "addrlen"},
	"accept4":       {"fd", "addr", "addrlen", "flags"},
	"read":          {"fd", "buf", "count"},
	"write":         {"fd", "buf", "count"},
	"mmap":          {"addr", "length", "prot", "flags", "fd", "offset"},
	"mprotect":      {"addr", "length", "prot"},
	"ptrace":        {"request", "pid", "addr", "data"},
	"kill":          {"pid", "sig"},
	"setuid":        {"uid"},
	"setgid":        {"gid"},
	"init_module":   {"image", "len", "params"},
	"finit_module":  {"fd", "params", "flags"},
	"delete_module": {"name", "flags"},
	"reboot":        {"magic", "magic2", "cmd", "arg"},
}

// File operations for MLS: reads need the subject to dominate the object
// (no read up), writes need the object to dominate the subject (no write
// down). An op in neither list counts as both.
var (
	// MLS checks the ops that read or change a file's contents or names;
	// metadata reads (getattr) and mappings of a file already opened
	// (mmap) are not MLS's to decide.
	mlsRead  = map[string]bool{"read": true, "exec": true, "open": true}
	mlsWrite = map[string]bool{"write": true, "append": true, "create": true, "unlink": true, "rename": true, "truncate": true, "chmod": true, "chown": true, "link": true, "symlink": true, "mkdir": true, "rmdir": true}
)
