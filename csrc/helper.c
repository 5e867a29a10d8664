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
#include "procfs.h"
#include "util.h"

#define NOTED_MAX 64
static struct {
    int32_t pid;
    uint64_t starttime;
} noted[NOTED_MAX];
static unsigned noted_next;

void helper_note_child(pid_t pid, uint64_t starttime) {
    /* a free slot, else the oldest one (round robin) */
    unsigned i = __atomic_fetch_add(&noted_next, 1, __ATOMIC_RELAXED) % NOTED_MAX;
    for (unsigned k = 0; k < NOTED_MAX; k++) {
        int32_t expected = 0;
        if (__atomic_compare_exchange_n(&noted[(i + k) % NOTED_MAX].pid, &expected, -1, 0,
                                        __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            i = (i + k) % NOTED_MAX;
            break;
        }
    }
    __atomic_store_n(&noted[i].pid, 0, __ATOMIC_RELEASE);
    noted[i].starttime = starttime;
    __atomic_store_n(&noted[i].pid, pid, __ATOMIC_RELEASE);
}

void helper_forget_child(pid_t pid) {
    for (int i = 0; i < NOTED_MAX; i++) {
        int32_t expected = pid;
        __atomic_compare_exchange_n(&noted[i].pid, &expected, 0, 0, __ATOMIC_RELEASE,
                                    __ATOMIC_RELAXED);
    }
}

int helper_is_noted_child(pid_t pid, uint64_t starttime) {
    for (int i = 0; i < NOTED_MAX; i++)
        if (__atomic_load_n(&noted[i].pid, __ATOMIC_ACQUIRE) == pid && noted[i].starttime == starttime)
            return 1;
    return 0;
}

void helper_default_signals(void) {
    struct sigaction sa = {.sa_handler = SIG_DFL};
    for (int sig = 1; sig < _NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            sigaction(sig, &sa, NULL); /* glibc's own (32, 33) answer EINVAL: fine */
}

pid_t helper_fork(void) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pid_t pid = fork();
    if (pid != 0) {
        int saved = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        struct procfs_info info;
        if (pid > 0 && procfs_read(pid, &info) == 0)
            helper_note_child(pid, info.starttime);
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
