// flood: the in-guest attacker and bystanders of 'gatevisor bench flood'
// (issue 21, gates under attack). Built static by the benchmark (gcc
// -static -O2) and added to the guest; it runs as root in a busybox guest
// and needs nothing but libc.
//
//   flood tcp HOST PORTLO PORTHI SECONDS [MAXOPEN [LIFE_MS]]
//       non-blocking TCP connects to HOST:PORTLO..PORTHI (cycling) as fast
//       as possible, at most MAXOPEN (256) sockets open at once; a socket
//       is closed once its connect resolves or after LIFE_MS (1000) ms
//   flood udp HOST PORTLO PORTHI SECONDS
//       UDP datagrams from one socket to HOST:PORTLO..PORTHI (cycling)
//   flood pin PREFIX SECONDS [COUNT]
//       the flow-table pinning pattern: UDP datagrams cycling over COUNT
//       (120000) distinct (address, port) destinations, addresses from the
//       IPv4 prefix A.B.C.D/N (at most 4096 of them) times ports from 20000
//   flood open PATH SECONDS
//       open(PATH) in a tight loop (the benchmark's policy denies it)
//   flood connect-latency HOST PORT N INTERVAL_MS [MAX_SECONDS]
//       the network bystander: N blocking connects (5 s timeout each), one
//       every INTERVAL_MS, each timed
//   flood open-latency PATH N INTERVAL_MS [MAX_SECONDS]
//       the syscall bystander: N timed open+close of PATH
//
// Every mode ends by its duration (at most 60 s) or its count (the latency
// modes also stop starting attempts after MAX_SECONDS, default 60, at most
// 600) and prints one line on stdout:
//
//   gvflood1 mode=M secs=S attempts=A ok=O refused=R timeouts=T errors=E
//       blocked=B last_errno=N rate=A/S start=T0 end=T1 [cycles=C cycle_s=D]
//       [skipped=K p50_us=X p99_us=Y max_us=Z lat_us=L,L,... fail_us=F,F,...]
//
// ok counts connects that succeeded, datagrams sent or opens that worked;
// refused counts ECONNREFUSED (tcp, connect-latency) or EACCES/EPERM
// (open, open-latency); timeouts connects that did not resolve in time;
// blocked sends that found the socket's buffer full (udp, pin: it then
// waits up to 10 ms for room); errors everything else, last_errno the last
// of them. start and end are CLOCK_BOOTTIME seconds, the clock of the
// guest's /proc/uptime. lat_us lists the successful attempts' times in µs
// in the order made (p50/p99/max are over them), fail_us the failed ones'.
// Exit status: 0 once the summary is printed, 2 on bad arguments, 1 if the
// mode could not start (no socket).
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
	MAX_SECONDS = 60,          // of a flood
	MAX_LATENCY_SECONDS = 600, // of a latency mode
	MAX_N = 100000,            // attempts of a latency mode
	MAX_OPEN = 4096,           // sockets a tcp flood keeps open
	DEFAULT_OPEN = 256,
	MAX_LIFE_MS = 10000, // of a tcp flood's socket
	DEFAULT_LIFE_MS = 1000,
	MAX_PIN = 1000000, // destinations of the pinning pattern
	DEFAULT_PIN = 120000,
	PIN_MAX_ADDRS = 4096,
	PIN_PORT0 = 20000,
};

static const long long CONNECT_TIMEOUT_NS = 5000000000LL; // a bystander's connect

static long long clock_ns(clockid_t id) {
	struct timespec ts;
	clock_gettime(id, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long long now(void) { return clock_ns(CLOCK_MONOTONIC); }

static double uptime(void) { return clock_ns(CLOCK_BOOTTIME) / 1e9; }

static int usage(void) {
	fprintf(stderr,
	        "usage: flood tcp HOST PORTLO PORTHI SECONDS [MAXOPEN [LIFE_MS]]\n"
	        "       flood udp HOST PORTLO PORTHI SECONDS\n"
	        "       flood pin PREFIX/LEN SECONDS [COUNT]\n"
	        "       flood open PATH SECONDS\n"
	        "       flood connect-latency HOST PORT N INTERVAL_MS [MAX_SECONDS]\n"
	        "       flood open-latency PATH N INTERVAL_MS [MAX_SECONDS]\n");
	return 2;
}

// num parses a decimal integer in [lo, hi] into *v; 0 if it is not one.
static int num(const char *s, long lo, long hi, long *v) {
	char *end;
	errno = 0;
	long n = strtol(s, &end, 10);
	if (errno != 0 || end == s || *end != 0 || n < lo || n > hi)
		return 0;
	*v = n;
	return 1;
}

static int addr4(const char *s, struct in_addr *a) { return inet_pton(AF_INET, s, a) == 1; }

// The counts every mode reports.
struct counts {
	const char *mode;
	long long t0, t1; // monotonic ns
	double up0, up1;  // boottime s
	long attempts, ok, refused, timeouts, errors, blocked;
	int last_errno;
	double cycles, cycle_s; // pin
};

static void begin(struct counts *c, const char *mode) {
	memset(c, 0, sizeof *c);
	c->mode = mode;
	c->up0 = uptime();
	c->t0 = now();
}

static void finish(struct counts *c) {
	c->t1 = now();
	c->up1 = uptime();
}

static void count_error(struct counts *c, int err) {
	c->errors++;
	c->last_errno = err;
}

static void print_counts(const struct counts *c) {
	double secs = (c->t1 - c->t0) / 1e9;
	printf("gvflood1 mode=%s secs=%.3f attempts=%ld ok=%ld refused=%ld timeouts=%ld errors=%ld blocked=%ld last_errno=%d rate=%.1f start=%.3f end=%.3f",
	       c->mode, secs, c->attempts, c->ok, c->refused, c->timeouts, c->errors, c->blocked, c->last_errno,
	       secs > 0 ? c->attempts / secs : 0.0, c->up0, c->up1);
	if (c->cycles > 0)
		printf(" cycles=%.2f cycle_s=%.3f", c->cycles, c->cycle_s);
}

// close_now closes fd without a FIN handshake or TIME_WAIT (a RST if it
// connected), so that a flood does not run out of local ports.
static void close_now(int fd) {
	struct linger l = {1, 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
	close(fd);
}

// resolve_connect counts the outcome of a connect that resolved with err.
static void resolve_connect(struct counts *c, int err) {
	if (err == 0)
		c->ok++;
	else if (err == ECONNREFUSED)
		c->refused++;
	else if (err == ETIMEDOUT)
		c->timeouts++;
	else
		count_error(c, err);
}

static int tcp_flood(struct in_addr host, long lo, long hi, long secs, long maxopen, long life_ms) {
	static struct pollfd pfd[MAX_OPEN];
	static long long opened[MAX_OPEN];
	struct counts c;
	int n = 0;
	long port = lo;
	begin(&c, "tcp");
	long long deadline = c.t0 + secs * 1000000000LL;
	for (long long t = now(); t < deadline; t = now()) {
		// Open sockets up to the limit, unless the kernel refuses more
		// (then wait for some to close).
		int stalled = 0;
		while (n < maxopen && !stalled) {
			int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
			if (fd < 0) {
				count_error(&c, errno);
				stalled = 1;
				break;
			}
			struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr = host};
			port = port == hi ? lo : port + 1;
			c.attempts++;
			if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
				c.ok++;
				close_now(fd);
				continue;
			}
			int err = errno;
			if (err == EINPROGRESS) {
				pfd[n] = (struct pollfd){.fd = fd, .events = POLLOUT};
				opened[n++] = t;
				continue;
			}
			close_now(fd);
			resolve_connect(&c, err);
			// Out of local ports or buffers: let sockets close first.
			stalled = err == EAGAIN || err == EADDRNOTAVAIL || err == ENOBUFS || err == ENOMEM;
		}
		// Wait for a socket to resolve, at most 10 ms, a socket's life or
		// what is left.
		long long left = deadline - now();
		int wait = left <= 0 ? 0 : left < 10000000LL ? (int)(left / 1000000) : 10;
		if (wait > life_ms)
			wait = (int)life_ms;
		if (poll(pfd, (nfds_t)n, n < maxopen && !stalled ? 0 : wait) < 0 && errno != EINTR) {
			count_error(&c, errno);
			break;
		}
		t = now();
		// Close what resolved or timed out, compacting the set.
		int k = 0;
		for (int i = 0; i < n; i++) {
			if (pfd[i].revents != 0) {
				int err = 0;
				socklen_t len = sizeof err;
				if (getsockopt(pfd[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
					err = errno;
				resolve_connect(&c, err);
				close_now(pfd[i].fd);
			} else if (t - opened[i] >= life_ms * 1000000LL) {
				c.timeouts++;
				close_now(pfd[i].fd);
			} else {
				pfd[k] = pfd[i];
				opened[k++] = opened[i];
			}
		}
		n = k;
	}
	// What is still in flight at the end neither resolved nor timed out.
	for (int i = 0; i < n; i++)
		close_now(pfd[i].fd);
	finish(&c);
	print_counts(&c);
	printf(" unresolved=%d maxopen=%ld life_ms=%ld\n", n, maxopen, life_ms);
	return 0;
}

// send_one sends one datagram to sa, waiting up to 10 ms for buffer room
// once; it counts the outcome.
static void send_one(struct counts *c, int fd, const struct sockaddr_in *sa) {
	static const char payload[16] = "gatevisor-flood";
	c->attempts++;
	if (sendto(fd, payload, sizeof payload, 0, (const struct sockaddr *)sa, sizeof *sa) >= 0) {
		c->ok++;
		return;
	}
	int err = errno;
	if (err == EAGAIN || err == ENOBUFS) {
		c->blocked++;
		struct pollfd p = {.fd = fd, .events = POLLOUT};
		poll(&p, 1, 10);
		return;
	}
	if (err == ECONNREFUSED) { // an ICMP error from an earlier datagram
		c->refused++;
		return;
	}
	count_error(c, err);
}

static int udp_socket(void) {
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		perror("flood: socket");
	return fd;
}

static int udp_flood(struct in_addr host, long lo, long hi, long secs) {
	int fd = udp_socket();
	if (fd < 0)
		return 1;
	struct counts c;
	long port = lo;
	begin(&c, "udp");
	long long deadline = c.t0 + secs * 1000000000LL;
	while (now() < deadline) {
		for (int i = 0; i < 16; i++) {
			struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr = host};
			port = port == hi ? lo : port + 1;
			send_one(&c, fd, &sa);
		}
	}
	finish(&c);
	close(fd);
	print_counts(&c);
	printf(" distinct=%ld\n", hi - lo + 1);
	return 0;
}

// parse_prefix parses A.B.C.D/N (8 <= N <= 30) into its first host
// address (host order) and its number of host addresses.
static int parse_prefix(const char *s, unsigned long *first, unsigned long *hosts) {
	char buf[32];
	const char *slash = strchr(s, '/');
	long bits;
	if (slash == NULL || (size_t)(slash - s) >= sizeof buf || !num(slash + 1, 8, 30, &bits))
		return 0;
	memcpy(buf, s, (size_t)(slash - s));
	buf[slash - s] = 0;
	struct in_addr a;
	if (!addr4(buf, &a))
		return 0;
	unsigned long mask = (0xffffffffUL << (32 - bits)) & 0xffffffffUL;
	*first = (ntohl(a.s_addr) & mask) + 1;
	*hosts = (1UL << (32 - bits)) - 2; // less the network and broadcast addresses
	return 1;
}

static int pin_flood(unsigned long first, unsigned long hosts, long secs, long count) {
	int fd = udp_socket();
	if (fd < 0)
		return 1;
	unsigned long naddr = hosts < PIN_MAX_ADDRS ? hosts : PIN_MAX_ADDRS;
	if ((unsigned long)count / naddr + PIN_PORT0 > 65535) {
		fprintf(stderr, "flood: %ld destinations need more than %lu addresses\n", count, naddr);
		close(fd);
		return 2;
	}
	struct counts c;
	long i = 0, cycles = 0;
	long long cycle0 = 0, cycle_ns = 0;
	begin(&c, "pin");
	cycle0 = c.t0;
	long long deadline = c.t0 + secs * 1000000000LL;
	while (now() < deadline) {
		for (int j = 0; j < 16; j++) {
			struct sockaddr_in sa = {.sin_family = AF_INET,
			                         .sin_port = htons((unsigned short)(PIN_PORT0 + (unsigned long)i / naddr)),
			                         .sin_addr = {.s_addr = htonl((uint32_t)(first + (unsigned long)i % naddr))}};
			send_one(&c, fd, &sa);
			if (++i == count) {
				long long t = now();
				i = 0;
				cycles++;
				cycle_ns += t - cycle0;
				cycle0 = t;
			}
		}
	}
	finish(&c);
	close(fd);
	c.cycles = cycles + (double)i / count;
	// The mean time of a whole cycle: how often each destination is sent
	// to again (its flow's timer refreshed); from the partial cycle when
	// none finished.
	c.cycle_s = cycles > 0 ? cycle_ns / 1e9 / cycles : (i > 0 ? (c.t1 - c.t0) / 1e9 * count / i : 0);
	print_counts(&c);
	printf(" distinct=%ld addresses=%lu\n", count, naddr);
	return 0;
}

static int open_flood(const char *path, long secs) {
	struct counts c;
	begin(&c, "open");
	long long deadline = c.t0 + secs * 1000000000LL;
	while (now() < deadline) {
		c.attempts++;
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			c.ok++;
			close(fd);
		} else if (errno == EACCES || errno == EPERM) {
			c.refused++;
		} else {
			count_error(&c, errno);
		}
	}
	finish(&c);
	print_counts(&c);
	printf("\n");
	return 0;
}

// A latency mode's samples.
static long long lat[MAX_N], fails[MAX_N];

static int cmp(const void *a, const void *b) {
	long long x = *(const long long *)a, y = *(const long long *)b;
	return (x > y) - (x < y);
}

static void print_list(const char *name, const long long *v, long n) {
	printf(" %s=", name);
	for (long i = 0; i < n; i++)
		printf(i ? ",%lld" : "%lld", v[i]);
}

// print_latencies ends the summary of a latency mode: percentiles of the
// nsucc successful attempts (nearest rank below), then every sample.
static void print_latencies(const struct counts *c, long skipped, long nsucc, long nfail) {
	static long long sorted[MAX_N];
	long long p50 = 0, p99 = 0, mx = 0;
	if (nsucc > 0) {
		memcpy(sorted, lat, (size_t)nsucc * sizeof lat[0]);
		qsort(sorted, (size_t)nsucc, sizeof sorted[0], cmp);
		p50 = sorted[nsucc * 50 / 100];
		p99 = sorted[nsucc * 99 / 100 < nsucc - 1 ? nsucc * 99 / 100 : nsucc - 1];
		mx = sorted[nsucc - 1];
	}
	print_counts(c);
	printf(" skipped=%ld p50_us=%lld p99_us=%lld max_us=%lld", skipped, p50, p99, mx);
	print_list("lat_us", lat, nsucc);
	print_list("fail_us", fails, nfail);
	printf("\n");
}

// pace sleeps until attempt k's time, start + k * interval; an attempt
// that is late starts at once.
static void pace(long long start, long k, long interval_ms) {
	long long at = start + k * interval_ms * 1000000LL;
	struct timespec ts = {.tv_sec = at / 1000000000LL, .tv_nsec = at % 1000000000LL};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
	}
}

// connect_once makes one blocking connect with a 5 s timeout and returns
// 0 or the error.
static int connect_once(const struct sockaddr_in *sa) {
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return errno;
	int err = 0;
	if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) != 0) {
		err = errno;
		if (err == EINPROGRESS) {
			long long deadline = now() + CONNECT_TIMEOUT_NS;
			struct pollfd p = {.fd = fd, .events = POLLOUT};
			int r = 0;
			for (;;) {
				long long left = deadline - now();
				if (left <= 0)
					break;
				r = poll(&p, 1, (int)((left + 999999) / 1000000));
				if (r >= 0 || errno != EINTR)
					break;
			}
			socklen_t len = sizeof err;
			if (r <= 0)
				err = r == 0 ? ETIMEDOUT : errno;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
				err = errno;
		}
	}
	close(fd);
	return err;
}

static int connect_latency(struct in_addr host, long port, long n, long interval, long maxsecs) {
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr = host};
	struct counts c;
	long nsucc = 0, nfail = 0, k = 0;
	begin(&c, "connect-latency");
	long long deadline = c.t0 + maxsecs * 1000000000LL;
	for (; k < n && now() < deadline; k++) {
		pace(c.t0, k, interval);
		long long t0 = now();
		int err = connect_once(&sa);
		long long us = (now() - t0) / 1000;
		c.attempts++;
		resolve_connect(&c, err);
		if (err == 0)
			lat[nsucc++] = us;
		else
			fails[nfail++] = us;
	}
	finish(&c);
	print_latencies(&c, n - k, nsucc, nfail);
	return 0;
}

static int open_latency(const char *path, long n, long interval, long maxsecs) {
	struct counts c;
	long nsucc = 0, nfail = 0, k = 0;
	begin(&c, "open-latency");
	long long deadline = c.t0 + maxsecs * 1000000000LL;
	for (; k < n && now() < deadline; k++) {
		pace(c.t0, k, interval);
		long long t0 = now();
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		int err = fd < 0 ? errno : 0;
		if (fd >= 0)
			close(fd);
		long long us = (now() - t0) / 1000;
		c.attempts++;
		if (err == 0) {
			c.ok++;
			lat[nsucc++] = us;
		} else {
			if (err == EACCES || err == EPERM)
				c.refused++;
			else
				count_error(&c, err);
			fails[nfail++] = us;
		}
	}
	finish(&c);
	print_latencies(&c, n - k, nsucc, nfail);
	return 0;
}

int main(int argc, char **argv) {
	if (argc < 2)
		return usage();
	const char *mode = argv[1];
	struct in_addr host;
	long lo, hi, secs, n, interval, extra;
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	if (strcmp(mode, "tcp") == 0 || strcmp(mode, "udp") == 0) {
		int tcp = mode[0] == 't';
		long life = DEFAULT_LIFE_MS;
		if (argc < 6 || argc > 6 + 2 * tcp || !addr4(argv[2], &host) || !num(argv[3], 1, 65535, &lo) ||
		    !num(argv[4], lo, 65535, &hi) || !num(argv[5], 1, MAX_SECONDS, &secs))
			return usage();
		extra = DEFAULT_OPEN;
		if ((argc >= 7 && !num(argv[6], 1, MAX_OPEN, &extra)) || (argc == 8 && !num(argv[7], 1, MAX_LIFE_MS, &life)))
			return usage();
		return tcp ? tcp_flood(host, lo, hi, secs, extra, life) : udp_flood(host, lo, hi, secs);
	}
	if (strcmp(mode, "pin") == 0) {
		unsigned long first, hosts;
		if (argc < 4 || argc > 5 || !parse_prefix(argv[2], &first, &hosts) || !num(argv[3], 1, MAX_SECONDS, &secs))
			return usage();
		extra = DEFAULT_PIN;
		if (argc == 5 && !num(argv[4], 1, MAX_PIN, &extra))
			return usage();
		return pin_flood(first, hosts, secs, extra);
	}
	if (strcmp(mode, "open") == 0) {
		if (argc != 4 || !num(argv[3], 1, MAX_SECONDS, &secs))
			return usage();
		return open_flood(argv[2], secs);
	}
	int conn = strcmp(mode, "connect-latency") == 0;
	if (conn || strcmp(mode, "open-latency") == 0) {
		int a = conn ? 4 : 3; // N's position
		long port = 0;
		if (argc < a + 2 || argc > a + 3 || (conn && (!addr4(argv[2], &host) || !num(argv[3], 1, 65535, &port))) ||
		    !num(argv[a], 1, MAX_N, &n) || !num(argv[a + 1], 0, 60000, &interval))
			return usage();
		extra = MAX_SECONDS;
		if (argc == a + 3 && !num(argv[a + 2], 1, MAX_LATENCY_SECONDS, &extra))
			return usage();
		return conn ? connect_latency(host, port, n, interval, extra) : open_latency(argv[2], n, interval, extra);
	}
	return usage();
}
