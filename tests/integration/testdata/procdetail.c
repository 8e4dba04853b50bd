// procdetail ARGS...: a process whose detail is known, for comparing
// `gatevisor ids` with the guest's own /proc. It opens one descriptor of
// each kind /proc/PID/fd names differently (a pipe, an eventfd, a unix
// socket pair, a TCP listener also dup'ed onto fd 20, an unlinked file, a
// memfd, a regular file read-only, an epoll), touches 8 MiB, starts two
// named threads pinned to CPUs 0 and 1 that burn some CPU time, burns
// some itself, then prints "ready PID" and sleeps forever: from then on
// its times, memory and descriptors do not move. Static, for the busybox
// guest.
#define _GNU_SOURCE
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static pthread_barrier_t burnt;

// burn spins until the calling thread has used secs of CPU time.
static void burn(double secs) {
	struct timespec a, b;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
	do {
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
	} while ((b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9 < secs);
}

static void *worker(void *arg) {
	long cpu = (long)arg;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof set, &set);
	sched_yield();
	burn(0.2 * (cpu + 1));
	pthread_barrier_wait(&burnt);
	for (;;)
		pause();
	return NULL;
}

static void die(const char *what) {
	perror(what);
	exit(1);
}

int main(void) {
	int p[2], sv[2];
	if (pipe(p) < 0) // 3, 4
		die("pipe");
	if (eventfd(0, 0) < 0) // 5
		die("eventfd");
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) // 6, 7
		die("socketpair");
	int l = socket(AF_INET, SOCK_STREAM, 0); // 8
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(7070), .sin_addr.s_addr = htonl(0x7f000001)};
	if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 1) < 0)
		die("listen");
	if (dup2(l, 20) < 0)
		die("dup2");
	if (open("/tmp/procdetail-gone", O_CREAT | O_RDWR | O_APPEND, 0600) < 0 || unlink("/tmp/procdetail-gone") < 0) // 9
		die("unlinked file");
	if (memfd_create("pdbuf", 0) < 0) // 10
		die("memfd");
	if (open("/usr/bin/procdetail", O_RDONLY) < 0) // 11
		die("open");
	if (epoll_create1(0) < 0) // 12
		die("epoll");
	volatile char *mem = mmap(NULL, 8 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	for (long i = 0; i < 8 << 20; i += 4096)
		mem[i] = 1;
	pthread_barrier_init(&burnt, NULL, 3);
	pthread_t t[2];
	for (long i = 0; i < 2; i++) {
		if (pthread_create(&t[i], NULL, worker, (void *)i) != 0)
			die("pthread_create");
		char name[16];
		snprintf(name, sizeof name, "pd-worker-%ld", i);
		pthread_setname_np(t[i], name);
	}
	burn(0.1);
	pthread_barrier_wait(&burnt);
	printf("ready %d\n", getpid());
	fflush(stdout);
	for (;;)
		pause();
}
