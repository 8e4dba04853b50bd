package gate

// atFDCWD is AT_FDCWD as a register value.
const atFDCWD = -100

// Synthetic argument sources for normalising a family member to the
// family's signature.
const (
	argCreatFlags = -2 // creat(path, mode) is open(path, O_CREAT|O_WRONLY|O_TRUNC, mode)
	argHowFlags   = -3 // openat2's flags are the first u64 of struct open_how
)

// oCreatFlags is O_CREAT|O_WRONLY|O_TRUNC.
const oCreatFlags = 0o100 | 0o1 | 0o1000

// Syscall is one kernel syscall the gate can trap and how its arguments map
// to the event the policy sees.
type Syscall struct {
	// Name is the kernel's name: the handler is __x64_sys_<Name>.
	Name string
	// Op is the name reported to the policy (the family).
	Op string
	// Args maps event argument i to raw argument Args[i] (di, si, dx, r10,
	// r8, r9) or to a synthetic source; nil means the six raw arguments.
	Args []int
	// Path is the raw argument holding a user path pointer, or -1.
	Path int
	// Dirfd is the raw argument holding the directory fd, or -1.
	Dirfd int
	// How is the raw argument holding a struct open_how pointer, or -1.
	How int
}

// families lists the members of each family the gate normalises.
var families = map[string][]Syscall{
	"open": {
		{Name: "open", Op: "open", Args: []int{0, 1, 2}, Path: 0, Dirfd: -1, How: -1},
		{Name: "openat", Op: "open", Args: []int{1, 2, 3}, Path: 1, Dirfd: 0, How: -1},
		{Name: "creat", Op: "open", Args: []int{0, argCreatFlags, 1}, Path: 0, Dirfd: -1, How: -1},
		{Name: "openat2", Op: "open", Args: []int{1, argHowFlags, 2}, Path: 1, Dirfd: 0, How: 2},
	},
	"execve": {
		{Name: "execve", Op: "execve", Args: []int{0, 1, 2}, Path: 0, Dirfd: -1, How: -1},
		{Name: "execveat", Op: "execve", Args: []int{1, 2, 3}, Path: 1, Dirfd: 0, How: -1},
	},
}

// pathArgs says which raw argument of a syscall is a path (and which is its
// dirfd), for syscalls trapped under their own name.
var pathArgs = map[string][2]int{
	"open": {0, -1}, "openat": {1, 0}, "openat2": {1, 0}, "creat": {0, -1},
	"execve": {0, -1}, "execveat": {1, 0},
	"unlink": {0, -1}, "unlinkat": {1, 0}, "rmdir": {0, -1}, "mkdir": {0, -1}, "mkdirat": {1, 0},
	"chmod": {0, -1}, "fchmodat": {1, 0}, "chown": {0, -1}, "lchown": {0, -1}, "fchownat": {1, 0},
	"rename": {0, -1}, "renameat": {1, 0}, "renameat2": {1, 0}, "link": {0, -1}, "linkat": {1, 0},
	"symlink": {1, -1}, "symlinkat": {2, 1}, "truncate": {0, -1}, "chdir": {0, -1}, "chroot": {0, -1},
	"mount": {1, -1}, "umount2": {0, -1}, "access": {0, -1}, "faccessat": {1, 0}, "faccessat2": {1, 0},
	"stat": {0, -1}, "lstat": {0, -1}, "newfstatat": {1, 0}, "readlink": {0, -1}, "readlinkat": {1, 0},
	"delete_module": {0, -1}, "swapon": {0, -1}, "acct": {0, -1}, "pivot_root": {1, -1},
}

// Expand returns the kernel syscalls that policy name op traps, with how
// each is reported. A name that is not a family is its own single member.
func Expand(op string) []Syscall {
	if f, ok := families[op]; ok {
		return f
	}
	s := Syscall{Name: op, Op: op, Path: -1, Dirfd: -1, How: -1}
	if p, ok := pathArgs[op]; ok {
		s.Path, s.Dirfd = p[0], p[1]
	}
	return []Syscall{s}
}

// Handler returns the kernel symbol of a syscall's x86-64 handler (the
// gate itself names the handlers of its guest's instruction set: isa.go).
func Handler(name string) string { return "__x64_sys_" + name }

// CompatHandlers returns the kernel symbols a syscall's i386 entry may
// have, preferred first: a compat wrapper when the i386 ABI needs one,
// else the common handler under its i386 name.
func CompatHandlers(name string) []string {
	return []string{"__ia32_compat_sys_" + name, "__ia32_sys_" + name}
}
