// procgap: the in-guest side of 'gatevisor bench proc' (issue 13). Built
// static by the benchmark (gcc -static -O2) and added to the guest; it
// needs nothing but libc.
//
//   procgap spin
//       a busy loop that makes no system call, until it is killed: the
//       target of the stop/cont timings
//   procgap gaps WARMUP_MS WINDOW_MS THRESHOLD_NS OUT
//       reads CLOCK_MONOTONIC in a tight loop for WARMUP_MS + WINDOW_MS ms
//       (at most 600,000) and records, after the warm-up, every gap
//       between two consecutive reads longer than THRESHOLD_NS: the time
//       the loop did not run (an interrupt, another task, the VM stopped
//       if the guest's clock saw it). It then writes OUT (through
//       OUT.tmp, renamed: the file appears whole) as
//
//         procgap1 window_ns=W reads=R over=N kept=K threshold_ns=T
//         GAP_NS                (K lines, in the order seen)
//
//       The loop makes no system call while it records (clock_gettime is
//       the vDSO's); at most 100,000 gaps are kept, N counts them all.
//   procgap tick PERIOD_US
//       writes "gvT<n>" lines (n = 1, 2, ...) to stdout every PERIOD_US
//       µs of the guest's clock (clock_nanosleep to absolute times), one
//       write(2) each, until it is killed: the side 'gatevisor bench
//       rejuvenate' timestamps on the host, through the console, to see
//       how long the guest was paused.
// Exit status: 0 once OUT is written, 2 on bad arguments, 1 on an error.
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long arg(const char *s, long lo, long hi) {
	char *end;
	long v = strtol(s, &end, 10);
	if (*s == 0 || *end != 0 || v < lo || v > hi) {
		fprintf(stderr, "procgap: %s is not in %ld..%ld\n", s, lo, hi);
		exit(2);
	}
	return v;
}

enum { MAXGAPS = 100000 };
static long long gapLen[MAXGAPS];

static int gaps(long warmupMs, long windowMs, long threshold, const char *out) {
	long long t0 = now(), start = t0 + warmupMs * 1000000LL, end = start + windowMs * 1000000LL;
	long long prev = t0, reads = 0, over = 0;
	long kept = 0;
	for (;;) {
		long long t = now();
		if (t >= start) {
			reads++;
			if (t - prev > threshold && prev >= start) {
				if (kept < MAXGAPS)
					gapLen[kept++] = t - prev;
				over++;
			}
			if (t >= end) {
				prev = t;
				break;
			}
		}
		prev = t;
	}
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s.tmp", out) >= (int)sizeof tmp) {
		fprintf(stderr, "procgap: path too long\n");
		return 2;
	}
	FILE *f = fopen(tmp, "w");
	if (f == NULL) {
		perror(tmp);
		return 1;
	}
	fprintf(f, "procgap1 window_ns=%lld reads=%lld over=%lld kept=%ld threshold_ns=%ld\n", prev - start, reads, over, kept, threshold);
	for (long i = 0; i < kept; i++)
		fprintf(f, "%lld\n", gapLen[i]);
	if (fclose(f) != 0 || rename(tmp, out) != 0) {
		perror(out);
		return 1;
	}
	return 0;
}

static int tick(long periodUs) {
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	char line[32];
	for (unsigned long n = 1;; n++) {
		next.tv_nsec += periodUs * 1000;
		while (next.tv_nsec >= 1000000000L) {
			next.tv_nsec -= 1000000000L;
			next.tv_sec++;
		}
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		int len = snprintf(line, sizeof line, "gvT%lu\n", n);
		if (write(1, line, len) != len)
			return 1;
	}
}

int main(int argc, char **argv) {
	if (argc == 2 && strcmp(argv[1], "spin") == 0) {
		for (volatile unsigned long i = 0;; i++)
			;
	}
	if (argc == 6 && strcmp(argv[1], "gaps") == 0)
		return gaps(arg(argv[2], 0, 600000), arg(argv[3], 1, 600000), arg(argv[4], 1, 1000000000), argv[5]);
	if (argc == 3 && strcmp(argv[1], "tick") == 0)
		return tick(arg(argv[2], 100, 1000000));
	fprintf(stderr, "usage: procgap spin | procgap gaps WARMUP_MS WINDOW_MS THRESHOLD_NS OUT | procgap tick PERIOD_US\n");
	return 2;
}
