/* reaper.c: no supervised process outlives a controller that dies.
 *
 * Scripts run in their own session, so nothing reaches them when the
 * controller is SIGKILLed: a pre-script still sleeping, or the session
 * holding a database lock until the post-script, would be left behind.
 * The reaper is a small process forked once per controller.  The
 * controller registers each process group it starts (and unregisters it
 * when done with it) in a table they share (MAP_SHARED): a store, no
 * system call, nothing to wake.  When the controller dies (socket EOF, or
 * its pidfd), the reaper SIGKILLs every group still in the table and exits.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "compat.h"
#include "helper.h"
#include "util.h"
#include "vmsnap.h"

#define MAX_GROUPS 1024

/* This process's table, shared with its reaper (one reaper per process). */
static int32_t *reaper_table;

__attribute__((noreturn)) static void reaper_main(int sock, int ctl_pidfd, int32_t *table) {
    int *keep[] = {&sock, &ctl_pidfd};
    helper_detach("vmsnap-reaper", keep, 2);

    for (;;) {
        struct pollfd pfd[2] = {{.fd = sock, .events = POLLIN}, {.fd = ctl_pidfd, .events = POLLIN}};
        if (poll(pfd, ctl_pidfd >= 0 ? 2 : 1, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (ctl_pidfd >= 0 && pfd[1].revents)
            break;
        char c;
        ssize_t k = recv(sock, &c, 1, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break; /* EOF: the controller is gone */
    }
    for (int i = 0; i < MAX_GROUPS; i++) {
        int32_t pgid = __atomic_load_n(&table[i], __ATOMIC_ACQUIRE);
        if (pgid > 0) {
            kill(-pgid, SIGKILL);
            kill(-pgid, SIGCONT);
        }
    }
    _exit(0);
}

int vmsnap_reaper_start(int *ret_fd) {
    int32_t *table = mmap(NULL, MAX_GROUPS * sizeof *table, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (table == MAP_FAILED)
        return -errno;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    int ctl_pidfd = compat_pidfd_open(getpid());
    pid_t pid = helper_fork();
    if (pid == 0) {
        close(sv[0]);
        reaper_main(sv[1], ctl_pidfd, table);
    }
    int e = errno;
    close(sv[1]);
    if (ctl_pidfd >= 0)
        close(ctl_pidfd);
    if (pid < 0) {
        close(sv[0]);
        munmap(table, MAX_GROUPS * sizeof *table);
        return -e;
    }
    reaper_table = table;
    /* the reaper exits only once we are gone: never a zombie of ours */
    *ret_fd = sv[0];
    return pid;
}

/* Replaces the first FROM in the table with TO; 0, or -1 if there is none. */
static int table_replace(int32_t from, int32_t to) {
    for (int i = 0; i < MAX_GROUPS; i++) {
        int32_t expected = from;
        if (__atomic_compare_exchange_n(&reaper_table[i], &expected, to, 0, __ATOMIC_RELEASE,
                                        __ATOMIC_RELAXED))
            return 0;
    }
    return -1;
}

int vmsnap_reaper_watch(int pgid) {
    if (!reaper_table || pgid <= 0)
        return -EINVAL;
    return table_replace(0, pgid) < 0 ? -ENOSPC : 0;
}

int vmsnap_reaper_unwatch(int pgid) {
    if (!reaper_table || pgid <= 0)
        return -EINVAL;
    return table_replace(pgid, 0) < 0 ? -ENOENT : 0;
}
