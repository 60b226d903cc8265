/* The only program of the test image without a shell: built static, it
 * stands in for an application image that has no sh, tar or coreutils.
 *
 *   tool sleep             wait forever (the sandbox's main process)
 *   tool echo ARGS...      print ARGS separated by spaces
 *   tool cat               copy stdin to stdout
 *   tool exit N            exit with code N
 *   tool read PATH         print the file at PATH
 *   tool syscall NAME      make one system call and print "ok" or its errno:
 *                          getpid, io_uring_setup, clone3, socket_alg, or a
 *                          bare number (a call no filter knows)
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif

static const char *errno_name(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    default: return "other";
    }
}

/* Arguments that make each call fail fast after the filter, if it passes. */
static int probe(const char *name) {
    long r;
    if (!strcmp(name, "getpid")) r = syscall(SYS_getpid);
    else if (!strcmp(name, "io_uring_setup")) r = syscall(SYS_io_uring_setup, 0, NULL);
    else if (!strcmp(name, "clone3")) r = syscall(SYS_clone3, NULL, 0);
    else if (!strcmp(name, "socket_alg")) r = socket(AF_ALG, SOCK_SEQPACKET, 0);
    else if (name[0] >= '0' && name[0] <= '9') r = syscall(atol(name));
    else {
        fprintf(stderr, "tool: unknown system call %s\n", name);
        return 2;
    }
    if (r >= 0) {
        puts("ok");
        return 0;
    }
    printf("%s\n", errno_name(errno));
    return 1;
}

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
        fputs("usage: tool sleep|echo|cat|exit|read|syscall ...\n", stderr);
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
    if (!strcmp(cmd, "syscall") && argc > 2) return probe(argv[2]);
    fprintf(stderr, "tool: unknown command %s\n", cmd);
    return 2;
}
