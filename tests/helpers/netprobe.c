/* What a noop script with noop_network = "host" must not reach on the
 * host: `netprobe NAME PORT` connects to the abstract Unix socket NAME
 * and to 127.0.0.1:PORT, and opens an AF_PACKET socket; one line each:
 * "NAME: reached READ" (what the service sent) or "NAME: refused ERRNO
 * (text)"; for AF_PACKET "packet: opened, N frames" or "packet: refused
 * ...". Then "route: default" when the namespace has a default route. */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void reached(const char *name, int s) {
    char buf[256];
    struct pollfd p = {s, POLLIN, 0};
    ssize_t n = 0;
    if (poll(&p, 1, 2000) > 0) n = read(s, buf, sizeof buf - 1);
    buf[n > 0 ? n : 0] = 0;
    printf("%s: reached %s\n", name, buf);
}

static void refused(const char *name) {
    printf("%s: refused %d (%s)\n", name, errno, strerror(errno));
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    size_t len = strlen(argv[1]);
    memcpy(un.sun_path + 1, argv[1], len);
    if (connect(s, (struct sockaddr *)&un, sizeof(sa_family_t) + 1 + len) == 0)
        reached("abstract", s);
    else
        refused("abstract");
    close(s);

    s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(s, (struct sockaddr *)&in, sizeof in) == 0)
        reached("tcp", s);
    else
        refused("tcp");
    close(s);

    s = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
    if (s >= 0) {
        int frames = 0;
        char buf[65536];
        struct pollfd p = {s, POLLIN, 0};
        while (frames < 1000 && poll(&p, 1, 1000) > 0 && read(s, buf, sizeof buf) > 0)
            frames++;
        printf("packet: opened, %d frames\n", frames);
        close(s);
    } else {
        refused("packet");
    }

    FILE *r = fopen("/proc/net/route", "r");
    char line[512];
    while (r && fgets(line, sizeof line, r)) {
        char ifname[64], dest[64];
        if (sscanf(line, "%63s %63s", ifname, dest) == 2 && !strcmp(dest, "00000000"))
            printf("route: default via %s\n", ifname);
    }
    return 0;
}
