/* helper.c: forking the core's helper processes (guardian, reaper). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>

#include "compat.h"
#include "helper.h"
#include "util.h"

pid_t helper_fork(void) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0) {
        int saved = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        errno = saved;
    }
    return pid;
}

static int cmp_int(const void *a, const void *b) {
    return *(const int *)a - *(const int *)b;
}

void helper_detach(const char *name, int **fds, int n) {
    setsid(); /* no terminal signal reaches us with the controller's group */
    prctl(PR_SET_NAME, name);
    /* no core dump: it could land on a filesystem we hold frozen, and block */
    prctl(PR_SET_DUMPABLE, 0);
    for (int i = 0; i < n; i++)
        if (*fds[i] >= 0 && *fds[i] <= 2)
            *fds[i] = fcntl(*fds[i], F_DUPFD_CLOEXEC, 3);
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd <= 2; fd++)
        if (devnull != fd)
            dup2(devnull, fd);
    if (devnull > 2)
        close(devnull);
    /* close 3.. except the kept ones: the gaps between them, in order */
    int sorted[HELPER_MAX_FDS], m = 0;
    for (int i = 0; i < n && m < HELPER_MAX_FDS; i++)
        if (*fds[i] >= 3)
            sorted[m++] = *fds[i];
    qsort(sorted, (size_t)m, sizeof *sorted, cmp_int);
    unsigned next = 3;
    for (int i = 0; i < m; i++) {
        if ((unsigned)sorted[i] > next)
            compat_close_range(next, (unsigned)sorted[i] - 1);
        next = (unsigned)sorted[i] + 1;
    }
    compat_close_range(next, UINT_MAX);
    if (chdir("/") < 0) { /* only so that we pin no directory */ }
}
