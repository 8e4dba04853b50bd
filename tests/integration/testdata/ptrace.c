/* ptrace attach|seize|traceme|attach32|rmmod32 NAME: the calls the
 * shipped policy decides at LSM hooks rather than at their handlers
 * (issue 19), made the ways a program can make them.
 *
 *   attach, seize  PTRACE_ATTACH / PTRACE_SEIZE a child of its own (which
 *                  the kernel itself allows: same uid, a descendant)
 *   attach32       the same attach through the i386 entry (int 0x80)
 *   traceme        a child asks to be traced, stops, and the parent writes
 *                  into its memory (PTRACE_POKEDATA) and lets it go on
 *   rmmod32 NAME   delete_module(NAME, O_NONBLOCK) through the i386 entry
 *
 * Prints "<mode>: ok" or "<mode>: <strerror>". Build it static and non-PIE
 * (gcc -static -no-pie): int 0x80 passes 32-bit pointers. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile long secret = 1;
static char name[64];

static long int80(long nr, long a, long b, long c, long d) {
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c), "S"(d) : "memory");
	return ret;
}

static int report(const char *mode, long r) {
	if (r != 0) {
		printf("%s: %s\n", mode, strerror(r < 0 && r > -4096 ? (int)-r : errno));
		return 1;
	}
	printf("%s: ok\n", mode);
	return 0;
}

static int traceme(void) {
	pid_t c = fork();
	if (c < 0) {
		return report("traceme", -1);
	}
	if (c == 0) {
		if (ptrace(PTRACE_TRACEME, 0, 0, 0) != 0) {
			_exit(2);
		}
		raise(SIGSTOP);
		_exit(secret == 42 ? 0 : 3);
	}
	int st;
	if (waitpid(c, &st, 0) != c || !WIFSTOPPED(st)) {
		printf("traceme: the child did not stop (status %#x)\n", st);
		return 1;
	}
	if (ptrace(PTRACE_POKEDATA, c, (void *)&secret, (void *)42) != 0) {
		int e = errno;
		kill(c, SIGKILL);
		printf("traceme: poke: %s\n", strerror(e));
		return 1;
	}
	ptrace(PTRACE_CONT, c, 0, 0);
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
		printf("traceme: the poke did not reach the child (status %#x)\n", st);
		return 1;
	}
	printf("traceme: ok\n");
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 2) {
		fprintf(stderr, "usage: ptrace attach|seize|traceme|attach32|rmmod32 NAME\n");
		return 2;
	}
	const char *mode = argv[1];
	if (strcmp(mode, "traceme") == 0) {
		return traceme();
	}
	if (strcmp(mode, "rmmod32") == 0) {
		if (argc != 3 || strlen(argv[2]) >= sizeof name || (unsigned long)name >> 32) {
			fprintf(stderr, "usage: ptrace rmmod32 NAME (built -no-pie)\n");
			return 2;
		}
		strcpy(name, argv[2]);
		return report(mode, int80(129, (long)name, 04000 /* O_NONBLOCK */, 0, 0));
	}
	pid_t c = fork();
	if (c < 0) {
		return report(mode, -1);
	}
	if (c == 0) {
		pause();
		_exit(0);
	}
	long r;
	if (strcmp(mode, "attach") == 0) {
		r = ptrace(PTRACE_ATTACH, c, 0, 0);
	} else if (strcmp(mode, "seize") == 0) {
		r = ptrace(PTRACE_SEIZE, c, 0, 0);
	} else if (strcmp(mode, "attach32") == 0) {
		r = int80(26, PTRACE_ATTACH, c, 0, 0);
	} else {
		kill(c, SIGKILL);
		fprintf(stderr, "usage: ptrace attach|seize|traceme|attach32|rmmod32 NAME\n");
		return 2;
	}
	int rc = report(mode, r);
	kill(c, SIGKILL);
	waitpid(c, NULL, 0);
	return rc;
}
