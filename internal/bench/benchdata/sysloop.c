// sysloop makes one system call N times (N <= 100,000,000, in batches of
// 1,000) and prints the loop's time in nanoseconds, N, and the median and
// lowest time of a batch: the in-guest side of 'gatevisor bench syscalls'.
// Built static by the benchmark (gcc -static) and added to the guest.
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cmp(const void *a, const void *b) {
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

static int fail(const char *what) {
	perror(what);
	return 1;
}

int main(int argc, char **argv) {
	const char *ops = "getpid, read, stat, kill0 or open";
	if (argc != 3) {
		fprintf(stderr, "usage: sysloop OP N  (OP: %s)\n", ops);
		return 2;
	}
	const char *op = argv[1];
	char *end;
	long n = strtol(argv[2], &end, 10);
	if (*end != 0 || n <= 0 || n > 100000000) {
		fprintf(stderr, "sysloop: N must be 1..100000000, not %s\n", argv[2]);
		return 2;
	}
	int zero = open("/dev/zero", O_RDONLY);
	if (zero < 0)
		return fail("open /dev/zero");
	pid_t me = getpid();
	struct stat st;
	char b;
	enum { GETPID, READ, STAT, KILL0, OPEN } which;
	if (strcmp(op, "getpid") == 0)
		which = GETPID;
	else if (strcmp(op, "read") == 0)
		which = READ;
	else if (strcmp(op, "stat") == 0)
		which = STAT;
	else if (strcmp(op, "kill0") == 0)
		which = KILL0;
	else if (strcmp(op, "open") == 0)
		which = OPEN;
	else {
		fprintf(stderr, "sysloop: unknown OP %s (want %s)\n", op, ops);
		return 2;
	}
	// The calls run in batches of BATCH, each timed: the median batch is
	// the steady cost per call, robust to the interrupts, guest
	// housekeeping and host preemption that land on a few batches.
	enum { BATCH = 1000, MAXBATCHES = 100000 };
	static long long batch[MAXBATCHES];
	long nb = (n + BATCH - 1) / BATCH;
	if (nb > MAXBATCHES)
		nb = MAXBATCHES;
	long done = 0;
	long long t0 = now();
	for (long k = 0; k < nb; k++) {
		long m = n - done < BATCH ? n - done : BATCH;
		long long b0 = now();
		for (long i = 0; i < m; i++) {
			switch (which) {
			case GETPID:
				syscall(SYS_getpid);
				break;
			case READ:
				if (read(zero, &b, 1) != 1)
					return fail("read /dev/zero");
				break;
			case STAT:
				if (stat("/etc/hostname", &st) != 0)
					return fail("stat /etc/hostname");
				break;
			case KILL0:
				if (kill(me, 0) != 0)
					return fail("kill 0");
				break;
			case OPEN: {
				int fd = open("/etc/hostname", O_RDONLY);
				if (fd < 0)
					return fail("open /etc/hostname");
				close(fd);
				break;
			}
			}
		}
		batch[k] = (now() - b0) * BATCH / m;
		done += m;
	}
	long long total = now() - t0;
	qsort(batch, nb, sizeof batch[0], cmp);
	// total ns, calls, median and lowest ns per BATCH calls
	printf("%lld %ld %lld %lld\n", total, done, batch[nb / 2], batch[0]);
	return 0;
}
