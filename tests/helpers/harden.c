/* Tries what the sandbox's seccomp filter must refuse and one call it must
 * allow; prints one line per attempt: "NAME: ok RESULT" or
 * "NAME: refused ERRNO (text)". Raw syscalls, so no libc wrapper hides a
 * result. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

static void say(const char *name, long r) {
    if (r < 0)
        printf("%s: refused %d (%s)\n", name, errno, strerror(errno));
    else
        printf("%s: ok %#lx\n", name, r);
}

static void try_socket(const char *name, int family, int type) {
    long s = syscall(SYS_socket, family, type, 0);
    say(name, s);
    if (s >= 0) close((int)s);
}

int main(void) {
    unsigned char params[120]; /* struct io_uring_params */
    memset(params, 0, sizeof params);
    long r = syscall(SYS_io_uring_setup, 4, params);
    say("io_uring_setup", r);
    if (r >= 0) close((int)r);
    try_socket("socket AF_VSOCK", 40 /* AF_VSOCK */, SOCK_STREAM);
    try_socket("socket AF_XDP", 44 /* AF_XDP */, SOCK_RAW);
    try_socket("socket AF_INET", AF_INET, SOCK_DGRAM);
    try_socket("socket AF_UNIX", AF_UNIX, SOCK_STREAM);
    say("personality ADDR_NO_RANDOMIZE", syscall(SYS_personality, 0x0040000UL));
    say("personality READ_IMPLIES_EXEC", syscall(SYS_personality, 0x0400000UL));
    say("personality query", syscall(SYS_personality, 0xffffffffUL));
    return 0;
}
