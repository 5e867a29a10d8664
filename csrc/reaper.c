/* reaper.c: no supervised process outlives a controller that dies, and the
 * application is resumed after it.
 *
 * Scripts run in their own session (and cgroup), so nothing reaches them
 * when the controller is SIGKILLed: a pre-script still sleeping, or the
 * session holding a database lock until the post-script, would be left
 * behind.  The reaper is a small process forked once per controller.  The
 * controller registers each tree it starts (and unregisters it when done
 * with it) in a table they share (MAP_SHARED): stores, no system call,
 * nothing to wake.  When the controller dies (socket EOF, or its pidfd),
 * the reaper kills every tree still in the table: cgroup.kill of its cgroup,
 * or, without one, each registered identity (pid + start time, through a
 * pidfd) and the process group that identity proves still to be ours.  A
 * bare group id is never signalled: by then it may be someone else's.
 * Then, if the controller left a resume command (the post-script's
 * runner), the reaper waits for the processes it named (the freeze
 * guardians: their thaw comes first) and starts it, detached.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "compat.h"
#include "contain.h"
#include "helper.h"
#include "procfs.h"
#include "util.h"
#include "vmsnap.h"

#define SLOT_FREE 0
#define SLOT_BUSY 1 /* being written or cleared by the controller */
#define SLOT_LIVE 2
#define RESUME_MAX_STRINGS 1024

struct reaper_entry {
    int32_t state;
    int32_t key;
    int32_t pid;       /* 0: a cgroup entry */
    int32_t pgid;      /* killed while the identity is alive in it; 0: none */
    uint64_t starttime;
    char cgroup[VMSNAP_CGROUP_PATH_MAX];
};

struct reaper_resume {
    int32_t valid;
    int32_t argc, envc, n_wait;
    int32_t wait_pid[VMSNAP_RESUME_WAIT_MAX];
    uint64_t wait_start[VMSNAP_RESUME_WAIT_MAX];
    char strings[VMSNAP_RESUME_MAX]; /* argv then envp, each NUL-terminated */
};

struct reaper_shared {
    struct reaper_entry slot[VMSNAP_REAPER_SLOTS];
    struct reaper_resume resume;
};

/* This process's table, shared with its reaper (one reaper per process). */
static struct reaper_shared *shared;

/* SIGKILL to a registered identity, and to its group if it is provably
 * still the one we registered: the (stopped) identity is alive in it. */
static void kill_identity(const struct reaper_entry *e) {
    _cleanup_close_ int fd = compat_pidfd_open(e->pid);
    uint64_t st;
    if (procfs_start_time(e->pid, &st) < 0 || st != e->starttime)
        return; /* gone, or the pid now names someone else */
    if (fd >= 0)
        compat_pidfd_send_signal(fd, SIGSTOP); /* it cannot leave the group meanwhile */
    struct procfs_info info;
    if (e->pgid > 0 && procfs_read(e->pid, &info) == 0 && info.pgrp == e->pgid &&
        vmsnap_process_matches(e->pid, e->starttime)) {
        kill(-e->pgid, SIGKILL);
        kill(-e->pgid, SIGCONT);
    }
    if (fd >= 0)
        compat_pidfd_send_signal(fd, SIGKILL);
    else
        contain_kill_identity(e->pid, e->starttime, SIGKILL);
}

/* Everything registered under KEY as identities: each identity, the group
 * it proves to be ours, and their descendants by parent pid (which a script
 * still running may have put out of its group).  All are stopped first, so
 * that nobody forks or is orphaned meanwhile. */
static void kill_key(struct reaper_shared *sh, int key) {
    struct vmsnap_proc *tree = calloc(1, sizeof *tree);
    if (!tree)
        return;
    tree->pid = key;
    tree->reaped = 1; /* its group id alone proves nothing by now */
    tree->starttime = UINT64_MAX;
    tree->containment = VMSNAP_CONTAIN_PGROUP;
    for (int i = 0; i < VMSNAP_REAPER_SLOTS && tree->n_tracked < VMSNAP_PROC_TRACKED; i++) {
        struct reaper_entry *e = &sh->slot[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == SLOT_LIVE && e->key == key && e->pid > 0) {
            tree->tracked_pid[tree->n_tracked] = e->pid;
            tree->tracked_start[tree->n_tracked++] = e->starttime;
        }
    }
    contain_signal(tree, SIGSTOP); /* and tracks the descendants it finds */
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &sh->slot[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == SLOT_LIVE && e->key == key && e->pid > 0)
            kill_identity(e);
    }
    for (int i = 0; i < tree->n_tracked; i++)
        contain_kill_identity(tree->tracked_pid[i], tree->tracked_start[i], SIGKILL);
    free(tree);
}

static void kill_registered(struct reaper_shared *sh) {
    int cg_fds[VMSNAP_REAPER_SLOTS], n_cg = 0;
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &sh->slot[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) != SLOT_LIVE)
            continue;
        if (e->pid > 0) {
            int first = 1; /* each key once, at its first identity */
            for (int j = 0; j < i && first; j++)
                first = !(sh->slot[j].state == SLOT_LIVE && sh->slot[j].key == e->key && sh->slot[j].pid > 0);
            if (first)
                kill_key(sh, e->key);
            continue;
        }
        int dfd = open(e->cgroup, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0 && contain_cgroup_kill(dfd) == 0)
            cg_fds[n_cg++] = dfd;
        else if (dfd >= 0)
            close(dfd);
    }
    /* the killed cgroups are removed once empty (a second at most) */
    for (int64_t until = now_ns() + 1000000000LL; n_cg > 0 && now_ns() < until;) {
        int left = 0;
        for (int i = 0; i < n_cg; i++)
            left += contain_cgroup_procs(cg_fds[i], 0) > 0;
        if (!left)
            break;
        usleep(5000);
    }
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &sh->slot[i];
        if (__atomic_load_n(&e->state, __ATOMIC_ACQUIRE) == SLOT_LIVE && e->pid == 0)
            rmdir(e->cgroup);
    }
    for (int i = 0; i < n_cg; i++)
        close(cg_fds[i]);
}

/* Until PID (with START) is gone, or DEADLINE. */
static void wait_gone(int pid, uint64_t start, int64_t deadline) {
    _cleanup_close_ int fd = compat_pidfd_open(pid);
    while (vmsnap_process_matches(pid, start) && now_ns() < deadline) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (fd >= 0)
            poll_until(&pfd, 1, min_deadline(deadline, now_ns() + 1000000000LL));
        else
            usleep(20000);
    }
}

static void run_resume(struct reaper_resume *r) {
    if (!__atomic_load_n(&r->valid, __ATOMIC_ACQUIRE))
        return;
    int64_t deadline = now_ns() + VMSNAP_RESUME_WAIT_S * 1000000000LL;
    for (int i = 0; i < r->n_wait; i++)
        wait_gone(r->wait_pid[i], r->wait_start[i], deadline);
    char *argv[RESUME_MAX_STRINGS + 1], *envp[RESUME_MAX_STRINGS + 1];
    char *s = r->strings;
    for (int i = 0; i < r->argc; i++, s += strlen(s) + 1)
        argv[i] = s;
    argv[r->argc] = NULL;
    for (int i = 0; i < r->envc; i++, s += strlen(s) + 1)
        envp[i] = s;
    envp[r->envc] = NULL;
    if (fork() != 0)
        return; /* the command is on its own (init's, once we exit) */
    setsid();
    umask(CHILD_UMASK);
    helper_default_signals();
    int devnull = open("/dev/null", O_RDWR);
    for (int fd = 0; fd <= 2; fd++)
        if (devnull != fd)
            dup2(devnull, fd);
    compat_close_range(3, ~0U);
    if (chdir("/") < 0)
        _exit(exec_failure_status(errno));
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    execve(argv[0], argv, envp);
    _exit(exec_failure_status(errno));
}

__attribute__((noreturn)) static void reaper_main(int sock, int ctl_pidfd, struct reaper_shared *sh) {
    pid_t controller = getppid();
    int *keep[] = {&sock, &ctl_pidfd};
    helper_detach("vmsnap-reaper", keep, 2);
    prctl(PR_SET_DUMPABLE, 0); /* no core dump to a filesystem that may be frozen */
    /* forked from the controller, we count its resident pages as ours: without
     * this, the OOM killer that SIGKILLs the controller may take us first */
    _cleanup_close_ int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0)
        (void)!write(oom, "-1000", 5);

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
    kill_registered(sh);
    contain_cgroup_sweep(controller); /* its cgroups that are empty now */
    run_resume(&sh->resume);
    _exit(0);
}

int vmsnap_reaper_start(int *ret_fd) {
    struct reaper_shared *sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return -errno;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        int e = errno;
        munmap(sh, sizeof *sh);
        return -e;
    }
    int ctl_pidfd = compat_pidfd_open(getpid());
    pid_t pid = helper_fork();
    if (pid == 0) {
        close(sv[0]);
        reaper_main(sv[1], ctl_pidfd, sh);
    }
    int e = errno;
    close(sv[1]);
    if (ctl_pidfd >= 0)
        close(ctl_pidfd);
    if (pid < 0) {
        close(sv[0]);
        munmap(sh, sizeof *sh);
        return -e;
    }
    shared = sh;
    /* the reaper exits only once we are gone: never a zombie of ours */
    *ret_fd = sv[0];
    return pid;
}

static int count_slots(int key, int *free_slots) {
    int mine = 0;
    *free_slots = 0;
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        int32_t st = __atomic_load_n(&shared->slot[i].state, __ATOMIC_ACQUIRE);
        *free_slots += st == SLOT_FREE;
        mine += st == SLOT_LIVE && shared->slot[i].key == key;
    }
    return mine;
}

static int add_entry(int key, int pid, uint64_t starttime, int pgid, const char *cgroup) {
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &shared->slot[i];
        int32_t expected = SLOT_FREE;
        if (!__atomic_compare_exchange_n(&e->state, &expected, SLOT_BUSY, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        e->key = key;
        e->pid = pid;
        e->starttime = starttime;
        e->pgid = pgid;
        snprintf(e->cgroup, sizeof e->cgroup, "%s", cgroup ? cgroup : "");
        __atomic_store_n(&e->state, SLOT_LIVE, __ATOMIC_RELEASE);
        return 0;
    }
    return -ENOSPC;
}

int vmsnap_reaper_unwatch(int key) {
    if (!shared || key <= 0)
        return -EINVAL;
    int found = 0;
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &shared->slot[i];
        int32_t expected = SLOT_LIVE;
        if (e->key != key || !__atomic_compare_exchange_n(&e->state, &expected, SLOT_BUSY, 0,
                                                          __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            continue;
        if (e->key == key) {
            found++;
            e->key = 0;
            __atomic_store_n(&e->state, SLOT_FREE, __ATOMIC_RELEASE);
        } else {
            __atomic_store_n(&e->state, SLOT_LIVE, __ATOMIC_RELEASE);
        }
    }
    return found ? 0 : -ENOENT;
}

int vmsnap_reaper_watch_identity(int key, int pid, uint64_t starttime, int pgid) {
    if (!shared || key <= 0 || pid <= 0)
        return -EINVAL;
    return add_entry(key, pid, starttime, pgid, NULL);
}

int vmsnap_reaper_watch(const struct vmsnap_proc *p) {
    if (!shared || p->pid <= 0)
        return -EINVAL;
    int32_t pids[VMSNAP_PROC_TRACKED + 1];
    uint64_t starts[VMSNAP_PROC_TRACKED + 1];
    int n = 0;
    if (p->containment == VMSNAP_CONTAIN_CGROUP && p->cgroup[0]) {
        n = 1; /* the cgroup holds the whole tree */
    } else {
        if (!p->reaped) {
            pids[n] = p->pid;
            starts[n++] = p->starttime;
        }
        /* after the wait: whatever it left running, as identities */
        n += contain_members((struct vmsnap_proc *)p, pids + n, starts + n, VMSNAP_PROC_TRACKED);
    }
    int free_slots, mine = count_slots(p->pid, &free_slots);
    if (n > free_slots + mine)
        return -ENOSPC; /* nothing changed: the caller still has what it had */
    if (mine)
        vmsnap_reaper_unwatch(p->pid);
    for (int i = 0; i < n; i++) {
        int r = p->containment == VMSNAP_CONTAIN_CGROUP
                    ? add_entry(p->pid, 0, 0, 0, p->cgroup)
                    : add_entry(p->pid, pids[i], starts[i], p->pid, NULL);
        if (r < 0)
            return r; /* another thread took the slots meanwhile */
    }
    return 0;
}

int vmsnap_reaper_set_resume(char *const argv[], char *const envp[], const int32_t *wait_pids,
                             const uint64_t *wait_starttimes, int n_wait) {
    if (!shared)
        return -EINVAL;
    struct reaper_resume *r = &shared->resume;
    if (!argv || !argv[0]) {
        __atomic_store_n(&r->valid, 0, __ATOMIC_RELEASE);
        return 0;
    }
    size_t total = 0;
    int argc = 0, envc = 0;
    for (; argv[argc]; argc++)
        total += strlen(argv[argc]) + 1;
    for (; envp && envp[envc]; envc++)
        total += strlen(envp[envc]) + 1;
    if (total > sizeof r->strings || argc + envc > RESUME_MAX_STRINGS || n_wait < 0 ||
        n_wait > VMSNAP_RESUME_WAIT_MAX)
        return -E2BIG; /* what was set stays set */
    __atomic_store_n(&r->valid, 0, __ATOMIC_RELEASE);
    char *s = r->strings;
    for (int i = 0; i < argc; i++)
        s = stpcpy(s, argv[i]) + 1;
    for (int i = 0; i < envc; i++)
        s = stpcpy(s, envp[i]) + 1;
    r->argc = argc;
    r->envc = envc;
    r->n_wait = n_wait;
    for (int i = 0; i < n_wait; i++) {
        r->wait_pid[i] = wait_pids[i];
        r->wait_start[i] = wait_starttimes[i];
    }
    __atomic_store_n(&r->valid, 1, __ATOMIC_RELEASE);
    return 0;
}
