/* abi32 open|mkdir PATH: makes the call through the kernel's i386 entry
 * (int 0x80, i386 syscall numbers), as a 32-bit program would. The
 * syscall-gate test uses it to check that a rule cannot be bypassed by
 * entering the kernel through the other ABI. Build it static and non-PIE
 * (gcc -static -no-pie): the path buffer must lie below 4 GiB, where a
 * 32-bit pointer can reach it. */
#include <stdio.h>
#include <string.h>

static char path[4096];

static long int80(long nr, long a, long b) {
	long ret;
	__asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b) : "memory");
	return ret;
}

int main(int argc, char **argv) {
	if (argc != 3 || strlen(argv[2]) >= sizeof path) {
		fprintf(stderr, "usage: abi32 open|mkdir PATH\n");
		return 2;
	}
	if ((unsigned long)path >> 32) {
		fprintf(stderr, "abi32: the path buffer is above 4 GiB: build with -no-pie\n");
		return 2;
	}
	strcpy(path, argv[2]);
	long r;
	if (strcmp(argv[1], "open") == 0) {
		r = int80(5, (long)path, 0); /* i386 open(path, O_RDONLY) */
	} else if (strcmp(argv[1], "mkdir") == 0) {
		r = int80(39, (long)path, 0755); /* i386 mkdir(path, 0755) */
	} else {
		fprintf(stderr, "usage: abi32 open|mkdir PATH\n");
		return 2;
	}
	if (r < 0) {
		printf("abi32 %s: %s\n", argv[1], strerror((int)-r));
		return 1;
	}
	printf("abi32 %s: ok\n", argv[1]);
	return 0;
}
