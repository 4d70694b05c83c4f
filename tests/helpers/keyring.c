/* Plants a key named argv[1] in the user keyring of the caller (uid 0). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    long id = syscall(SYS_add_key, "user", argv[1], "planted", 7, -4 /* KEY_SPEC_USER_KEYRING */);
    if (id < 0) {
        printf("add_key refused: %s\n", strerror(errno));
        return 1;
    }
    printf("PLANTED key %ld\n", id);
    return 0;
}
