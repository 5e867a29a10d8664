/* guardian.c: the freeze session and its guardian process.
 *
 * The guardian is forked before anything is frozen and does the freezing
 * itself, so it always knows exactly what this session froze and can thaw
 * exactly that: at the deadline, when the controller dies (socket EOF or
 * its pidfd), on SIGUSR1/SIGTERM/SIGINT/SIGHUP, or when asked.  If the
 * guardian itself dies, the controller sees the socket close and thaws
 * from the shared states; if both die, the record under /run/vmsnap/
 * lets `vmsnap thaw` finish the job.
 *
 * Inside the guardian one worker thread per filesystem, created before the
 * window, waits for its wave: presync (syncfs) all in parallel, then freeze
 * level 0 (children) in parallel, then level 1, ...; thaw the other way.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "compat.h"
#include "helper.h"
#include "procfs.h"
#include "util.h"
#include "vmsnap.h"

/* Bytes of the shared block that describe N filesystems: what the record holds. */
static size_t record_size(int n) {
    return offsetof(struct vmsnap_shared, fs) + (size_t)n * sizeof(struct vmsnap_fs);
}

static void record_write(int record_fd, const struct vmsnap_shared *sh) {
    if (record_fd < 0)
        return;
    size_t size = record_size(sh->n);
    const char *p = (const char *)sh;
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(record_fd, p + off, size - off, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += (size_t)w;
    }
}

static int get_state(const struct vmsnap_fs *f) {
    return __atomic_load_n(&f->state, __ATOMIC_ACQUIRE);
}

static void set_state(struct vmsnap_fs *f, int state) {
    __atomic_store_n(&f->state, state, __ATOMIC_RELEASE);
}

/* ---------------------------------------------------------------------- */
/* The guardian process                                                    */

struct guardian {
    struct vmsnap_shared *sh;
    int sock;        /* to the controller; -1 once it is gone or detached */
    int ctl_pidfd;   /* the controller's pidfd, or -1 */
    int sigfd;
    int evfd;        /* workers write 1 here after each state change */
    int record_fd;
    const char *record_path;
    int max_level;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int presync;
    int sync_go;
    int freeze_level;  /* workers with level <= this may freeze */
    int thaw_level;    /* frozen workers with level >= this thaw */
    int abort;         /* no new syncs or freezes */
};

struct worker {
    struct guardian *g;
    int idx;
};

static void notify(struct guardian *g) {
    uint64_t one = 1;
    while (write(g->evfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct guardian *g = w->g;
    struct vmsnap_fs *f = &g->sh->fs[w->idx];

    pthread_mutex_lock(&g->mu);
    while (!g->sync_go && g->freeze_level < f->level && !g->abort)
        pthread_cond_wait(&g->cv, &g->mu);
    int do_sync = g->presync && g->sync_go && !g->abort;
    pthread_mutex_unlock(&g->mu);

    if (do_sync) {
        f->sync_start_ns = now_ns();
        set_state(f, VMSNAP_FS_SYNCING);
        f->sync_errno = compat_syncfs(f->fd) < 0 ? errno : 0;
        f->sync_end_ns = now_ns();
        set_state(f, VMSNAP_FS_SYNCED);
        notify(g);
    }

    pthread_mutex_lock(&g->mu);
    while (g->freeze_level < f->level && !g->abort)
        pthread_cond_wait(&g->cv, &g->mu);
    if (g->abort) {
        set_state(f, VMSNAP_FS_SKIPPED);
        pthread_mutex_unlock(&g->mu);
        notify(g);
        return NULL;
    }
    f->freeze_start_ns = now_ns();
    set_state(f, VMSNAP_FS_FREEZING);
    pthread_mutex_unlock(&g->mu);

    int r = ioctl(f->fd, FIFREEZE, 0);
    f->freeze_end_ns = now_ns();
    if (r < 0) {
        f->freeze_errno = errno;
        /* EBUSY: someone else holds a freeze; it is theirs to thaw. */
        set_state(f, errno == EBUSY ? VMSNAP_FS_BUSY : VMSNAP_FS_FAILED);
        notify(g);
        return NULL;
    }
    set_state(f, VMSNAP_FS_FROZEN);
    notify(g);

    pthread_mutex_lock(&g->mu);
    while (g->thaw_level > f->level)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);

    f->thaw_start_ns = now_ns();
    set_state(f, VMSNAP_FS_THAWING);
    r = ioctl(f->fd, FITHAW, 0);
    f->thaw_end_ns = now_ns();
    if (r < 0) {
        f->thaw_errno = errno;
        set_state(f, VMSNAP_FS_THAW_FAILED);
    } else {
        set_state(f, VMSNAP_FS_THAWED);
    }
    notify(g);
    return NULL;
}

enum event {
    EV_PRED,            /* the awaited condition holds */
    EV_CMD_FREEZE,
    EV_CMD_PRESYNC_FREEZE,
    EV_CMD_THAW,
    EV_CMD_DETACH,
    EV_DEADLINE,
    EV_CONTROLLER_GONE,
    EV_SIGNAL,
};

typedef int (*predicate)(struct guardian *g, int arg);

static void drain_eventfd(struct guardian *g) {
    uint64_t v;
    while (read(g->evfd, &v, sizeof v) < 0 && errno == EINTR)
        ;
}

/* Waits until PRED(g, arg) holds or something else happens. */
static enum event wait_event(struct guardian *g, predicate pred, int arg) {
    for (;;) {
        if (pred && pred(g, arg))
            return EV_PRED;
        struct pollfd pfd[4];
        int n = 0;
        pfd[n++] = (struct pollfd){.fd = g->evfd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = g->sigfd, .events = POLLIN};
        int sock_i = -1, pid_i = -1;
        if (g->sock >= 0) {
            sock_i = n;
            pfd[n++] = (struct pollfd){.fd = g->sock, .events = POLLIN};
        }
        if (g->ctl_pidfd >= 0 && !g->sh->detached) {
            pid_i = n;
            pfd[n++] = (struct pollfd){.fd = g->ctl_pidfd, .events = POLLIN};
        }
        int r = poll_until(pfd, (nfds_t)n, g->sh->deadline_ns);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return EV_CONTROLLER_GONE; /* cannot watch any more: thaw */
        }
        if (r == 0 && now_ns() >= g->sh->deadline_ns)
            return EV_DEADLINE;
        if (pfd[1].revents) {
            struct signalfd_siginfo si;
            if (read(g->sigfd, &si, sizeof si) == sizeof si)
                return EV_SIGNAL;
        }
        if (pid_i >= 0 && pfd[pid_i].revents)
            return EV_CONTROLLER_GONE;
        if (sock_i >= 0 && pfd[sock_i].revents) {
            char c;
            ssize_t k = recv(g->sock, &c, 1, MSG_DONTWAIT);
            if (k < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (k <= 0) {
                close(g->sock);
                g->sock = -1;
                if (!g->sh->detached)
                    return EV_CONTROLLER_GONE;
                continue;
            }
            switch (c) {
            case 'F': return EV_CMD_FREEZE;
            case 'P': return EV_CMD_PRESYNC_FREEZE;
            case 'T': return EV_CMD_THAW;
            case 'D': return EV_CMD_DETACH;
            default: continue;
            }
        }
        if (pfd[0].revents)
            drain_eventfd(g);
    }
}

static int all_synced(struct guardian *g, int arg) {
    (void)arg;
    for (int i = 0; i < g->sh->n; i++) {
        int st = get_state(&g->sh->fs[i]);
        if (st == VMSNAP_FS_PENDING || st == VMSNAP_FS_SYNCING)
            return 0;
    }
    return 1;
}

static int level_settled(struct guardian *g, int level) {
    for (int i = 0; i < g->sh->n; i++) {
        struct vmsnap_fs *f = &g->sh->fs[i];
        if (f->level != level)
            continue;
        int st = get_state(f);
        if (st != VMSNAP_FS_FROZEN && st != VMSNAP_FS_BUSY && st != VMSNAP_FS_FAILED)
            return 0;
    }
    return 1;
}

static int level_failed(struct guardian *g, int level) {
    for (int i = 0; i < g->sh->n; i++)
        if (g->sh->fs[i].level == level && get_state(&g->sh->fs[i]) == VMSNAP_FS_FAILED)
            return 1;
    return 0;
}

/* Nothing at LEVEL or above is frozen or thawing (stuck freezes excepted). */
static int thawed_down_to(struct guardian *g, int level) {
    for (int i = 0; i < g->sh->n; i++) {
        struct vmsnap_fs *f = &g->sh->fs[i];
        int st = get_state(f);
        if (f->level >= level && (st == VMSNAP_FS_FROZEN || st == VMSNAP_FS_THAWING))
            return 0;
    }
    return 1;
}

static int all_final(struct guardian *g, int arg) {
    (void)arg;
    for (int i = 0; i < g->sh->n; i++) {
        int st = get_state(&g->sh->fs[i]);
        if (st == VMSNAP_FS_FREEZING || st == VMSNAP_FS_FROZEN || st == VMSNAP_FS_THAWING)
            return 0;
    }
    return 1;
}

static void set_phase(struct guardian *g, int *field, int value) {
    pthread_mutex_lock(&g->mu);
    *field = value;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* Waits only for the workers: used once the thaw has begun, when nothing
 * (deadline, signals, the controller) can change what happens next. */
static void wait_workers(struct guardian *g, predicate pred, int arg) {
    while (!pred(g, arg)) {
        struct pollfd pfd = {.fd = g->evfd, .events = POLLIN};
        if (poll(&pfd, 1, -1) > 0)
            drain_eventfd(g);
    }
}

static void thaw_all(struct guardian *g, int reason) {
    if (!g->sh->thaw_reason)
        g->sh->thaw_reason = reason;
    set_phase(g, &g->abort, 1);
    for (int level = g->max_level; level >= 0; level--) {
        set_phase(g, &g->thaw_level, level);
        wait_workers(g, (predicate)thawed_down_to, level);
    }
}

/* FIFREEZE takes the superblock's percpu rwsems for writing, and each
 * percpu_down_write() waits for an RCU grace period unless a recent writer
 * left the fast path disabled: some 20 ms per filesystem, most of an idle
 * freeze.  Expedited grace periods take microseconds.  We switch them on
 * for the freeze waves only and restore the previous setting at once. */
#define RCU_EXPEDITED "/sys/kernel/rcu_expedited"

static int rcu_expedite_begin(void) {
    int fd = open(RCU_EXPEDITED, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char old = 0;
    int changed = -1;
    if (pread(fd, &old, 1, 0) == 1 && old == '0' && pwrite(fd, "1", 1, 0) == 1)
        changed = 0;
    close(fd);
    return changed; /* the value to restore, or -1: nothing to restore */
}

static void rcu_expedite_end(int prev) {
    if (prev < 0)
        return;
    int fd = open(RCU_EXPEDITED, O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!pwrite(fd, prev ? "1" : "0", 1, 0);
        close(fd);
    }
}

static enum event do_freeze_waves(struct guardian *g) {
    for (int level = 0; level <= g->max_level; level++) {
        set_phase(g, &g->freeze_level, level);
        enum event ev = wait_event(g, level_settled, level);
        if (ev != EV_PRED)
            return ev;
        if (level_failed(g, level))
            break; /* the controller thaws; deeper waves would only add to undo */
    }
    return EV_PRED;
}

/* Runs the freeze command; EV_PRED when done, or the event that cut it short. */
static enum event do_freeze(struct guardian *g, int presync) {
    if (presync) {
        g->presync = 1;
        set_phase(g, &g->sync_go, 1);
        enum event ev = wait_event(g, all_synced, 0);
        if (ev != EV_PRED)
            return ev;
    }
    int prev = g->sh->expedite_rcu ? rcu_expedite_begin() : -1;
    g->sh->rcu_expedited = prev >= 0;
    enum event ev = do_freeze_waves(g);
    rcu_expedite_end(prev);
    return ev;
}

static void reply(struct guardian *g, char c) {
    if (g->sock >= 0)
        (void)send(g->sock, &c, 1, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static int thaw_reason_for(enum event ev) {
    switch (ev) {
    case EV_DEADLINE: return VMSNAP_THAW_DEADLINE;
    case EV_CONTROLLER_GONE: return VMSNAP_THAW_CONTROLLER_DIED;
    case EV_SIGNAL: return VMSNAP_THAW_SIGNAL;
    default: return VMSNAP_THAW_REQUESTED;
    }
}

static void guardian_loop(struct guardian *g) {
    enum event ev;
    for (;;) {
        ev = wait_event(g, NULL, 0);
        if (ev == EV_CMD_FREEZE || ev == EV_CMD_PRESYNC_FREEZE) {
            enum event r = do_freeze(g, ev == EV_CMD_PRESYNC_FREEZE);
            if (r != EV_PRED) {
                ev = r;
                break;
            }
            if (g->sh->record_live)
                record_write(g->record_fd, g->sh);
            reply(g, 'f');
            continue;
        }
        if (ev == EV_CMD_DETACH) {
            g->sh->detached = 1;
            reply(g, 'd');
            continue;
        }
        break;
    }
    if (ev == EV_DEADLINE)
        g->sh->deadline_hit = 1;
    thaw_all(g, thaw_reason_for(ev));
    reply(g, 't');
    /* A freeze that was stuck in the kernel thaws itself when it returns. */
    wait_workers(g, all_final, 0);
}

static void oom_protect(void) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        (void)!write(fd, "-1000", 5);
        close(fd);
    }
}

__attribute__((noreturn)) static void guardian_main(struct vmsnap_shared *sh, int sock, int ctl_pidfd,
                                                    int record_fd, const char *record_path) {
    struct guardian g = {
        .sh = sh, .sock = sock, .ctl_pidfd = ctl_pidfd, .record_fd = record_fd,
        .record_path = record_path, .freeze_level = -1, .thaw_level = INT_MAX,
    };
    int *keep[VMSNAP_MAX_FS + 3];
    int nkeep = 0;
    keep[nkeep++] = &g.sock;
    keep[nkeep++] = &g.ctl_pidfd;
    keep[nkeep++] = &g.record_fd;
    for (int i = 0; i < sh->n; i++)
        keep[nkeep++] = &sh->fs[i].fd;
    helper_detach("vmsnap-guardian", keep, nkeep);
    oom_protect();

    sigset_t all, watched;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* already blocked by the parent; be sure */
    sigemptyset(&watched);
    sigaddset(&watched, SIGUSR1);
    sigaddset(&watched, SIGTERM);
    sigaddset(&watched, SIGINT);
    sigaddset(&watched, SIGHUP);
    sigaddset(&watched, SIGQUIT);
    g.sigfd = signalfd(-1, &watched, SFD_CLOEXEC);
    g.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    char status = 'R';
    if (g.sigfd < 0 || g.evfd < 0)
        status = 'E';

    static struct worker workers[VMSNAP_MAX_FS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int i = 0; status == 'R' && i < sh->n; i++) {
        if (sh->fs[i].level > g.max_level)
            g.max_level = sh->fs[i].level;
        workers[i] = (struct worker){.g = &g, .idx = i};
        pthread_t t;
        if (pthread_create(&t, &attr, worker_main, &workers[i]) != 0)
            status = 'E';
    }
    if (status != 'R') {
        /* Nothing frozen yet: release the workers and report. */
        set_phase(&g, &g.abort, 1);
        reply(&g, 'E');
        _exit(1);
    }
    reply(&g, 'R');

    guardian_loop(&g);

    if (all_final(&g, 0)) {
        int clean = 1;
        for (int i = 0; i < sh->n; i++)
            if (get_state(&sh->fs[i]) == VMSNAP_FS_THAW_FAILED)
                clean = 0;
        if (clean && record_path && record_path[0])
            unlink(record_path);
        else if (sh->record_live)
            /* a thaw failed: leave the final word for `vmsnap thaw`, unless the
             * record lives on a filesystem we froze (it may still be frozen;
             * the record written before the freeze says enough) */
            record_write(record_fd, sh);
    }
    __atomic_store_n(&sh->guardian_done, 1, __ATOMIC_RELEASE);
    _exit(0);
}

/* ---------------------------------------------------------------------- */
/* The controller side                                                     */

struct vmsnap_session {
    struct vmsnap_shared *sh;
    int sock;
    int guardian_pid;
    int guardian_pidfd;
    int reaped;
    int awaiting;   /* a command was sent and its reply not yet read */
    char *record_path;
};

static int await_reply(struct vmsnap_session *s, char want, int64_t deadline) {
    for (;;) {
        struct pollfd pfd = {.fd = s->sock, .events = POLLIN};
        int r = poll_until(&pfd, 1, deadline);
        if (r < 0)
            return -errno; /* -EINTR goes back to Python so Ctrl-C works */
        if (r == 0)
            return -ETIMEDOUT;
        char c;
        ssize_t k = recv(s->sock, &c, 1, MSG_DONTWAIT);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (k <= 0 || c == 't') {
            s->awaiting = 0;
            if (k <= 0 && !__atomic_load_n(&s->sh->guardian_done, __ATOMIC_ACQUIRE)) {
                /* the guardian died: do its job */
                vmsnap_session_emergency_thaw(s);
                return -ECHILD;
            }
            if (c == want || k <= 0)
                return 0;
            return -ECANCELED; /* the guardian thawed on its own (deadline, signal) */
        }
        if (c == want) {
            s->awaiting = 0;
            return 0;
        }
    }
}

static int command(struct vmsnap_session *s, char cmd, char want, int64_t deadline) {
    if (!s->awaiting) {
        if (send(s->sock, &cmd, 1, MSG_NOSIGNAL) < 0 && errno != EPIPE && errno != ECONNRESET)
            return -errno;
        s->awaiting = cmd;
    }
    return await_reply(s, want, deadline);
}

int vmsnap_session_start(const struct vmsnap_shared *init, int record_fd,
                         const char *record_path, struct vmsnap_session **ret) {
    if (init->n < 1 || init->n > VMSNAP_MAX_FS)
        return -EINVAL;
    struct vmsnap_session *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->sock = -1;
    s->guardian_pidfd = -1;
    s->record_path = strdup(record_path ? record_path : "");
    s->sh = mmap(NULL, sizeof *s->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s->sh == MAP_FAILED || !s->record_path) {
        int e = s->sh == MAP_FAILED ? -errno : -ENOMEM;
        if (s->sh != MAP_FAILED)
            munmap(s->sh, sizeof *s->sh);
        free(s->record_path);
        free(s);
        return e;
    }
    struct vmsnap_shared *sh = s->sh;
    memcpy(sh, init, record_size(init->n));
    sh->magic = VMSNAP_RECORD_MAGIC;
    sh->abi = VMSNAP_ABI_VERSION;
    sh->controller_pid = getpid();
    for (int i = 0; i < sh->n; i++)
        sh->fs[i].state = VMSNAP_FS_PENDING;

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
        int e = -errno;
        vmsnap_session_free(s);
        return e;
    }
    s->sock = sv[0];
    int ctl_pidfd = compat_pidfd_open(getpid()); /* -1 on old kernels: the socket suffices */

    pid_t pid = helper_fork();   /* the guardian sets up its own signalfd */
    if (pid == 0) {
        close(sv[0]);
        guardian_main(sh, sv[1], ctl_pidfd, record_fd, s->record_path);
    }
    int fork_errno = errno;
    close(sv[1]);
    if (ctl_pidfd >= 0)
        close(ctl_pidfd);
    if (pid < 0) {
        vmsnap_session_free(s);
        return -fork_errno;
    }
    s->guardian_pid = pid;
    s->guardian_pidfd = compat_pidfd_open(pid);
    sh->guardian_pid = pid;
    procfs_start_time(pid, &sh->guardian_starttime);
    record_write(record_fd, sh);

    int r = await_reply(s, 'R', now_ns() + 10LL * 1000000000LL);
    if (r < 0) {
        vmsnap_session_free(s);
        return r == -EINTR ? -EINTR : -ECHILD;
    }
    *ret = s;
    return 0;
}

struct vmsnap_shared *vmsnap_session_shared(struct vmsnap_session *s) { return s->sh; }
int vmsnap_session_guardian_pid(struct vmsnap_session *s) { return s->guardian_pid; }

int vmsnap_session_freeze(struct vmsnap_session *s, int presync, int64_t wait_deadline_ns) {
    return command(s, presync ? 'P' : 'F', 'f', wait_deadline_ns);
}

int vmsnap_session_thaw(struct vmsnap_session *s, int64_t wait_deadline_ns) {
    if (__atomic_load_n(&s->sh->guardian_done, __ATOMIC_ACQUIRE))
        return 0;
    if (s->awaiting && s->awaiting != 'T')
        s->awaiting = 0; /* an interrupted freeze: the thaw supersedes it */
    return command(s, 'T', 't', wait_deadline_ns);
}

int vmsnap_session_detach(struct vmsnap_session *s) {
    return command(s, 'D', 'd', now_ns() + 5LL * 1000000000LL);
}

int vmsnap_session_emergency_thaw(struct vmsnap_session *s) {
    struct vmsnap_shared *sh = s->sh;
    int max_level = 0, failures = 0;
    for (int i = 0; i < sh->n; i++)
        if (sh->fs[i].level > max_level)
            max_level = sh->fs[i].level;
    if (!sh->thaw_reason)
        sh->thaw_reason = VMSNAP_THAW_EMERGENCY;
    for (int level = max_level; level >= 0; level--) {
        for (int i = 0; i < sh->n; i++) {
            struct vmsnap_fs *f = &sh->fs[i];
            int st = get_state(f);
            if (f->level != level)
                continue;
            if (st != VMSNAP_FS_FROZEN && st != VMSNAP_FS_FREEZING && st != VMSNAP_FS_THAWING)
                continue;
            f->thaw_start_ns = now_ns();
            int r = ioctl(f->fd, FITHAW, 0);
            f->thaw_end_ns = now_ns();
            /* EINVAL: it was not frozen after all (the freeze never landed) */
            if (r < 0 && errno != EINVAL) {
                f->thaw_errno = errno;
                set_state(f, VMSNAP_FS_THAW_FAILED);
                failures++;
            } else {
                set_state(f, VMSNAP_FS_THAWED);
            }
        }
    }
    return failures ? -EIO : 0;
}

void vmsnap_session_free(struct vmsnap_session *s) {
    if (!s)
        return;
    if (s->sock >= 0)
        close(s->sock); /* a guardian not detached thaws on EOF */
    if (s->guardian_pid > 0 && !s->reaped) {
        int detached = s->sh != MAP_FAILED && s->sh->detached;
        if (!detached) {
            /* give it a moment to finish, but never hang on a stuck one */
            if (s->guardian_pidfd >= 0) {
                struct pollfd pfd = {.fd = s->guardian_pidfd, .events = POLLIN};
                poll(&pfd, 1, 2000);
            }
            if (waitpid(s->guardian_pid, NULL, WNOHANG) == s->guardian_pid)
                s->reaped = 1;
        }
    }
    if (s->guardian_pidfd >= 0)
        close(s->guardian_pidfd);
    if (s->sh && s->sh != MAP_FAILED)
        munmap(s->sh, sizeof *s->sh);
    free(s->record_path);
    free(s);
}
