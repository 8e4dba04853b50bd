/*
 * Structures in the shapes the kernel's have, for TestDWARFAgreesWithBTF:
 * the DWARF and the BTF that gcc writes for them must give the same
 * layouts. Regenerate layouts.o with (gcc 12+, for -gbtf):
 *   gcc -O0 -g -gbtf -c layouts.c -o layouts.o
 */
typedef unsigned long long u64;
typedef int pid_t;
typedef struct { int counter; } atomic_t;
typedef struct { long counter; } atomic_long_t;

struct list_head { struct list_head *next, *prev; };
struct hlist_node { struct hlist_node *next, **pprev; };
struct rb_node { unsigned long __rb_parent_color; struct rb_node *rb_right, *rb_left; } __attribute__((aligned(sizeof(long))));

enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS, MM_SHMEMPAGES, NR_MM_COUNTERS };
enum pid_type { PIDTYPE_PID, PIDTYPE_TGID, PIDTYPE_PGID, PIDTYPE_SID, PIDTYPE_MAX };
enum signed_enum { NEG = -2, POS = 7 };

struct percpu_counter { long long count; struct list_head list; int *counters; };

struct sched_entity {
	struct rb_node run_node;
	unsigned int on_rq;
	u64 exec_start, sum_exec_runtime, vruntime;
};

struct qstr {
	union {
		struct { unsigned int hash; unsigned int len; };
		u64 hash_len;
	};
	const unsigned char *name;
};

struct dentry;
struct vfsmount;
struct path { struct vfsmount *mnt; struct dentry *dentry; };
struct dentry { unsigned int d_flags; struct dentry *d_parent; struct qstr d_name; unsigned char d_iname[32]; };

struct mm_struct {
	struct {
		unsigned long mmap_base;
		atomic_t mm_users;
		struct percpu_counter rss_stat[NR_MM_COUNTERS];
		unsigned long saved_auxv[46];
		unsigned long arg_start, arg_end, env_start, env_end;
	};
	unsigned long cpu_bitmap[];
};

struct task_struct;
struct signal_struct { atomic_t live; int nr_threads; struct list_head thread_head; u64 utime, stime; };
struct cred { atomic_long_t usage; unsigned int uid, gid, suid, sgid, euid, egid; };

struct task_struct {
	unsigned int __state;
	void *stack;
	const volatile int prio;
	struct sched_entity se;
	struct mm_struct *mm, *active_mm;
	int exit_state;
	unsigned sched_reset_on_fork:1;
	unsigned sched_contributes_to_load:1;
	unsigned in_execve:1;
	pid_t pid, tgid;
	struct task_struct *real_parent, *parent;
	struct list_head children, sibling, tasks;
	const struct cred *real_cred, *cred;
	char comm[16];
	struct signal_struct *signal;
	int (*fn)(void *arg);
	union { struct { int a, b; } pair; long raw[2][3]; } u;
	enum pid_type type;
	enum signed_enum se2;
	struct {
		struct hlist_node node;
		union { unsigned long flags; void *p; };
	};
	_Bool flag;
	float f;
	struct { int x; } named_anon;
};

struct task_struct init_task;
struct mm_struct init_mm;
struct dentry dentry0;
struct path path0;
