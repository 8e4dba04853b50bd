/* openat DIR NAME: opens DIR as a directory fd, then NAME relative to it
 * with openat(2), and reads from it. The syscall-gate test uses it to check
 * that a path relative to a directory fd is resolved before a path rule is
 * matched (busybox has no applet that calls openat with a real dirfd). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc != 3) {
		fprintf(stderr, "usage: openat DIR NAME\n");
		return 2;
	}
	int dir = open(argv[1], O_RDONLY | O_DIRECTORY);
	if (dir < 0) {
		printf("open %s: %s\n", argv[1], strerror(errno));
		return 2;
	}
	int f = openat(dir, argv[2], O_RDONLY);
	if (f < 0) {
		printf("openat: %s\n", strerror(errno));
		return 1;
	}
	char buf[64];
	printf("read %zd\n", read(f, buf, sizeof buf));
	return 0;
}
