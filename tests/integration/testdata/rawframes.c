/* rawframes IFACE DSTMAC SRCIP DSTIP [RANDOM]: sends malformed Ethernet
 * frames on IFACE through an AF_PACKET raw socket, one case per line of
 * output ("NAME sent N" or "NAME error ERRNO-TEXT"), then RANDOM frames of
 * random bytes behind a valid Ethernet header. The network-gate test runs
 * it in a guest and checks that the gate refused each case for the right
 * reason, that the monitor survived, and that traffic still flows.
 *
 * Every frame carries IFACE's own MAC as its source (except spoofed-mac),
 * so that the gate's parser, not its anti-spoofing check, is what refuses
 * it. Built static by the test: gcc -static -O2 -o rawframes rawframes.c */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static int fd;
static struct sockaddr_ll to;
static uint8_t dstmac[6], srcmac[6];
static uint32_t srcip, dstip; /* network order */
static uint8_t buf[70000];

static uint16_t csum(const void *p, size_t n, uint32_t sum) {
	const uint8_t *b = p;
	for (; n > 1; n -= 2, b += 2)
		sum += (uint32_t)b[0] << 8 | b[1];
	if (n)
		sum += (uint32_t)b[0] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }

static size_t ether(uint16_t type, const uint8_t *src) {
	memcpy(buf, dstmac, 6);
	memcpy(buf + 6, src ? src : srcmac, 6);
	put16(buf + 12, type);
	return 14;
}

/* ipv4 writes an Ethernet header and a 20-byte IPv4 header for a payload
 * of plen bytes and returns a pointer to the payload. */
static uint8_t *ipv4(uint8_t proto, size_t plen, uint16_t frag) {
	uint8_t *ip = buf + 14;
	ether(0x0800, NULL);
	memset(ip, 0, 20);
	ip[0] = 0x45;
	put16(ip + 2, (uint16_t)(20 + plen));
	put16(ip + 4, 0x1234);
	put16(ip + 6, frag);
	ip[8] = 64;
	ip[9] = proto;
	memcpy(ip + 12, &srcip, 4);
	memcpy(ip + 16, &dstip, 4);
	put16(ip + 10, csum(ip, 20, 0));
	return ip + 20;
}

static void ip_resum(void) {
	uint8_t *ip = buf + 14;
	size_t hl = (size_t)(ip[0] & 0xf) * 4;
	put16(ip + 10, 0);
	put16(ip + 10, csum(ip, hl, 0));
}

/* l4sum computes a TCP/UDP checksum over the pseudo-header and seg. */
static uint16_t l4sum(uint8_t proto, const uint8_t *seg, size_t n) {
	uint8_t ph[12];
	memcpy(ph, &srcip, 4);
	memcpy(ph + 4, &dstip, 4);
	ph[8] = 0;
	ph[9] = proto;
	put16(ph + 10, (uint16_t)n);
	uint16_t s = csum(ph, 12, 0);
	return csum(seg, n, (uint16_t)~s);
}

static size_t udp(uint16_t sport, uint16_t dport, size_t dlen, int good, uint16_t frag) {
	uint8_t *u = ipv4(17, 8 + dlen, frag);
	put16(u, sport);
	put16(u + 2, dport);
	put16(u + 4, (uint16_t)(8 + dlen));
	put16(u + 6, 0);
	memset(u + 8, 'x', dlen);
	uint16_t s = l4sum(17, u, 8 + dlen);
	put16(u + 6, good ? (s ? s : 0xffff) : (uint16_t)(s ^ 0x5555));
	return 14 + 20 + 8 + dlen;
}

static size_t tcp_syn(uint16_t sport, uint16_t dport, uint8_t doff, int good) {
	uint8_t *t = ipv4(6, 20, 0);
	memset(t, 0, 20);
	put16(t, sport);
	put16(t + 2, dport);
	t[4] = 0x11; /* sequence number */
	t[12] = (uint8_t)(doff << 4);
	t[13] = 0x02; /* SYN */
	put16(t + 14, 64240);
	uint16_t s = l4sum(6, t, 20);
	put16(t + 16, good ? s : (uint16_t)(s ^ 0x5555));
	return 14 + 40;
}

static void send_case(const char *name, size_t len) {
	ssize_t n = sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to);
	if (n < 0)
		printf("%s error %s\n", name, strerror(errno));
	else
		printf("%s sent %zd\n", name, n);
}

static int parse_mac(const char *s, uint8_t *m) {
	return sscanf(s, "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) == 6;
}

int main(int argc, char **argv) {
	if (argc < 5 || !parse_mac(argv[2], dstmac) || inet_pton(AF_INET, argv[3], &srcip) != 1 || inet_pton(AF_INET, argv[4], &dstip) != 1) {
		fprintf(stderr, "usage: rawframes IFACE DSTMAC SRCIP DSTIP [RANDOM]\n");
		return 2;
	}
	long nrandom = argc > 5 ? atol(argv[5]) : 0;
	fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("socket(AF_PACKET)");
		return 1;
	}
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0 || ioctl(fd, SIOCGIFINDEX, &ifr) < 0) {
		perror(argv[1]);
		return 1;
	}
	ioctl(fd, SIOCGIFHWADDR, &ifr);
	memcpy(srcmac, ifr.ifr_hwaddr.sa_data, 6);
	ioctl(fd, SIOCGIFINDEX, &ifr);
	memset(&to, 0, sizeof to);
	to.sll_family = AF_PACKET;
	to.sll_ifindex = ifr.ifr_ifindex;
	to.sll_halen = 6;
	memcpy(to.sll_addr, dstmac, 6);

	size_t n;
	/* Too short. */
	ether(0x0800, NULL);
	send_case("runt-10", 10);
	send_case("ether-only", 14);
	ipv4(17, 0, 0);
	send_case("ip-truncated", 14 + 12);
	/* Bad IPv4 header lengths and total lengths. */
	n = udp(40000, 7, 8, 1, 0);
	buf[14] = 0x44, ip_resum();
	send_case("ihl-short", n);
	n = udp(40001, 7, 8, 1, 0);
	buf[14] = 0x4f, ip_resum();
	send_case("ihl-long", n);
	n = udp(40002, 7, 8, 1, 0);
	put16(buf + 16, 1000), ip_resum();
	send_case("totlen-long", n);
	n = udp(40003, 7, 8, 1, 0);
	put16(buf + 16, 12), ip_resum();
	send_case("totlen-short", n);
	n = udp(40004, 7, 8, 1, 0);
	buf[14] = 0x65, ip_resum();
	send_case("version-6", n);
	n = udp(40005, 7, 8, 1, 0);
	buf[24] ^= 0xff;
	send_case("ip-checksum", n);
	/* Fragments. */
	n = udp(40006, 7, 64, 1, 0x2000); /* MF, offset 0 */
	send_case("frag-first", n);
	n = udp(40007, 7, 64, 1, 185); /* offset 1480 */
	send_case("frag-later", n);
	/* Transport headers and checksums. */
	n = tcp_syn(40008, 7, 15, 1);
	send_case("tcp-doff-long", n);
	n = tcp_syn(40009, 7, 2, 1);
	send_case("tcp-doff-short", n);
	n = tcp_syn(40010, 7, 5, 0);
	send_case("tcp-checksum", n);
	n = udp(40011, 7, 8, 0, 0);
	send_case("udp-checksum", n);
	n = udp(40012, 7, 8, 1, 0);
	put16(buf + 14 + 20 + 4, 500);
	send_case("udp-length", n);
	{
		uint8_t *ic = ipv4(1, 16, 0);
		memset(ic, 0, 16);
		ic[0] = 8; /* echo request */
		put16(ic + 4, 0x4242);
		put16(ic + 2, (uint16_t)(csum(ic, 16, 0) ^ 0x5555));
		send_case("icmp-checksum", 14 + 20 + 16);
	}
	/* Protocols and ethertypes the gate does not forward. */
	ipv4(47, 8, 0);
	send_case("ip-proto-gre", 14 + 28);
	ether(0x86dd, NULL);
	memset(buf + 14, 0, 48);
	buf[14] = 0x60;
	send_case("ipv6", 14 + 48);
	ether(0x8100, NULL);
	memset(buf + 14, 0, 46);
	send_case("vlan", 14 + 46);
	ether(0x0806, NULL);
	memset(buf + 14, 0, 10);
	send_case("arp-short", 14 + 10);
	/* A well-formed datagram from a MAC that is not the guest's. */
	{
		uint8_t other[6] = {0x02, 0x66, 0x66, 0x66, 0x66, 0x66};
		n = udp(40013, 7, 8, 1, 0);
		memcpy(buf + 6, other, 6);
		send_case("spoofed-mac", n);
	}
	/* A well-formed ARP reply that claims DSTIP for another MAC (ARP
	 * spoofing) from the guest's own Ethernet source. */
	{
		uint8_t other[6] = {0x02, 0x66, 0x66, 0x66, 0x66, 0x66};
		uint8_t *a = buf + ether(0x0806, NULL);
		put16(a, 1);          /* Ethernet */
		put16(a + 2, 0x0800); /* IPv4 */
		a[4] = 6, a[5] = 4;
		put16(a + 6, 2); /* reply */
		memcpy(a + 8, other, 6);
		memcpy(a + 14, &dstip, 4);
		memcpy(a + 18, dstmac, 6);
		memcpy(a + 24, &srcip, 4);
		send_case("arp-spoofed-sender", 14 + 28);
	}
	/* Longer than the frame codec carries: the driver sends it if the MTU
	 * allows (the test raises it to 65535 first). */
	ether(0x0800, NULL);
	memset(buf + 14, 0, 65535);
	send_case("oversized", 14 + 65535);
	/* Random bytes behind a valid Ethernet header. */
	srandom(42);
	long sent = 0, errs = 0;
	for (long i = 0; i < nrandom; i++) {
		size_t len = 14 + (size_t)(random() % 1500);
		uint16_t types[] = {0x0800, 0x0806, 0x86dd, (uint16_t)random()};
		ether(types[random() % 4], NULL);
		for (size_t j = 14; j < len; j++)
			buf[j] = (uint8_t)random();
		if (random() % 2 && len >= 34) { /* mostly-valid IPv4 headers reach deeper */
			buf[14] = 0x45;
			put16(buf + 16, (uint16_t)(len - 14));
			put16(buf + 20, 0);
			ip_resum();
		}
		if (sendto(fd, buf, len, 0, (struct sockaddr *)&to, sizeof to) < 0)
			errs++;
		else
			sent++;
	}
	if (nrandom)
		printf("random sent %ld errors %ld\n", sent, errs);
	return 0;
}
