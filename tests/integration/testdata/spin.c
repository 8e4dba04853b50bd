/* spin: a CPU hog that makes no syscalls once running: it blocks every
 * signal it can, starts N-1 more threads (argv[1], default 1) and spins
 * on each. Used by the proc tests: only SIGSTOP and SIGKILL, which cannot
 * be blocked, reach it, and nothing it does gives the kernel a syscall to
 * act at. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile unsigned long counter;

static void *spin(void *arg)
{
	(void)arg;
	for (;;)
		counter++;
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 1;
	sigset_t all;

	sigfillset(&all);
	sigprocmask(SIG_BLOCK, &all, 0); /* threads inherit the mask */
	for (int i = 1; i < n; i++) {
		pthread_t t;
		if (pthread_create(&t, 0, spin, 0) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	spin(0);
	return 0;
}
