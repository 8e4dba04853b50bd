/* filecat FILE: print FILE, then "uid=R euid=E" to stderr; exit 2 if it
 * cannot be opened, 3 if it cannot be read. Installed setuid root in the
 * guest by TestFileGate: run by a user, its creds then hold euid 0 and
 * uid 1000, as after any setuid exec (busybox drops a setuid exec's euid
 * for most applets, so it cannot show this). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
	char buf[4096];
	ssize_t n;
	int fd;
	if (argc != 2)
		return 1;
	fprintf(stderr, "uid=%d euid=%d\n", (int)getuid(), (int)geteuid());
	fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		fprintf(stderr, "open: %s\n", strerror(errno));
		return 2;
	}
	while ((n = read(fd, buf, sizeof buf)) > 0)
		fwrite(buf, 1, (size_t)n, stdout);
	if (n < 0) {
		fprintf(stderr, "read: %s\n", strerror(errno));
		return 3;
	}
	return 0;
}
