package policy

// errnos are the Linux errno values a deny may return (asm-generic numbering).
var errnos = map[string]int32{
	"EPERM": 1, "ENOENT": 2, "ESRCH": 3, "EINTR": 4, "EIO": 5, "ENXIO": 6,
	"E2BIG": 7, "ENOEXEC": 8, "EBADF": 9, "ECHILD": 10, "EAGAIN": 11, "ENOMEM": 12,
	"EACCES": 13, "EFAULT": 14, "EBUSY": 16, "EEXIST": 17, "EXDEV": 18, "ENODEV": 19,
	"ENOTDIR": 20, "EISDIR": 21, "EINVAL": 22, "ENFILE": 23, "EMFILE": 24, "ETXTBSY": 26,
	"EFBIG": 27, "ENOSPC": 28, "ESPIPE": 29, "EROFS": 30, "EMLINK": 31, "EPIPE": 32,
	"ENOSYS": 38, "ENOTSUP": 95, "EOPNOTSUPP": 95, "EAFNOSUPPORT": 97, "EADDRINUSE": 98,
	"ENETUNREACH": 101, "ECONNRESET": 104, "ETIMEDOUT": 110, "ECONNREFUSED": 111,
	"EHOSTUNREACH": 113,
}

// ErrnoName returns the name of a Linux errno, or "" if unknown.
func ErrnoName(n int32) string {
	best := ""
	for k, v := range errnos {
		if v == n && (best == "" || k < best) {
			best = k
		}
	}
	return best
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
