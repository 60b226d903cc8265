/* The only program of the test image without a shell: built static, it
 * stands in for an application image that has no sh, tar or coreutils.
 *
 *   tool sleep             wait forever (the sandbox's main process)
 *   tool echo ARGS...      print ARGS separated by spaces
 *   tool cat               copy stdin to stdout
 *   tool exit N            exit with code N
 *   tool read PATH         print the file at PATH
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int copy(int from) {
    char buf[65536];
    ssize_t n;
    while ((n = read(from, buf, sizeof buf)) > 0) {
        if (write(1, buf, (size_t)n) != n) return 1;
    }
    return n < 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs("usage: tool sleep|echo|cat|exit|read ...\n", stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "sleep")) {
        for (;;) pause();
    }
    if (!strcmp(cmd, "echo")) {
        for (int i = 2; i < argc; i++) {
            if (i > 2) fputc(' ', stdout);
            fputs(argv[i], stdout);
        }
        fputc('\n', stdout);
        return 0;
    }
    if (!strcmp(cmd, "cat")) return copy(0);
    if (!strcmp(cmd, "exit") && argc > 2) return atoi(argv[2]);
    if (!strcmp(cmd, "read") && argc > 2) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) {
            perror(argv[2]);
            return 1;
        }
        return copy(fd);
    }
    fprintf(stderr, "tool: unknown command %s\n", cmd);
    return 2;
}
