/* The floor for spawn-and-wait: bare posix_spawn + waitpid of /bin/true in C,
 * no pipes, no supervision.  Prints the median in milliseconds. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 300;
    long long *t = calloc((size_t)n, sizeof *t);
    char *args[] = {"/bin/true", NULL};
    for (int i = 0; i < n; i++) {
        long long t0 = now_ns();
        pid_t pid;
        if (posix_spawn(&pid, "/bin/true", NULL, NULL, args, environ) != 0)
            return 1;
        waitpid(pid, NULL, 0);
        t[i] = now_ns() - t0;
    }
    qsort(t, (size_t)n, sizeof *t, cmp);
    printf("%.3f\n", t[n / 2] / 1e6);
    return 0;
}
