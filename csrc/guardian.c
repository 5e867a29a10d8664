/* guardian.c: the guardian process of a freeze session.
 *
 * The guardian is forked before anything is frozen and does the freezing
 * itself, so it always knows exactly what this session froze and can thaw
 * exactly that: at the deadline, when the controller dies (socket EOF or
 * its pidfd), on SIGUSR1/SIGUSR2/SIGTERM/SIGINT/SIGHUP/SIGQUIT, or when
 * asked.  If the guardian itself dies, the controller sees the socket close
 * and thaws from the shared states (session.c); if both die, the record
 * under /run/vmsnap/ lets `vmsnap thaw` finish the job (freeze.c).
 *
 * Inside the guardian one worker thread per filesystem, created before the
 * window, waits for its wave: presync (syncfs) all in parallel, bounded,
 * then freeze level 0 (children), then level 1, ...; within a level all at
 * once or just in time (schedule.c); thaw the other way (thaw_levels()).
 * The guardian thaws through its own fds, which helper_detach() may
 * renumber; the shared block holds no fd numbers.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>

#include "compat.h"
#include "freeze.h"
#include "guardian.h"
#include "helper.h"
#include "protocol.h"
#include "schedule.h"
#include "waves.h"
#include "util.h"

struct worker {
    struct guardian *g;
    int idx;
};

static void notify(struct guardian *g) {
    uint64_t one = 1;
    while (write(g->evfd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static int64_t deadline(const struct guardian *g) {
    return __atomic_load_n(&g->sh->deadline_ns, __ATOMIC_ACQUIRE);
}

/* The freeze cap counts from the first FIFREEZE issued, whichever worker issues it. */
static void first_freeze(struct guardian *g, int64_t t) {
    int64_t none = 0;
    if (__atomic_compare_exchange_n(&g->sh->first_freeze_ns, &none, t, 0, __ATOMIC_ACQ_REL,
                                    __ATOMIC_ACQUIRE))
        __atomic_store_n(&g->sh->deadline_ns, add_saturated(t, g->sh->timeout_ns), __ATOMIC_RELEASE);
}

static void worker_presync(struct guardian *g, struct vmsnap_fs *f, int fd) {
    f->sync_start_ns = now_ns();
    fs_set_state(f, VMSNAP_FS_SYNCING);
    f->sync_errno = compat_syncfs(fd) < 0 ? errno : 0;
    f->sync_end_ns = now_ns();
    fs_set_state(f, VMSNAP_FS_SYNCED);
    notify(g);
}

static void *worker_main(void *arg) {
    struct worker *w = arg;
    struct guardian *g = w->g;
    struct vmsnap_fs *f = &g->sh->fs[w->idx];
    int fd = g->fds[w->idx];

    pthread_mutex_lock(&g->mu);
    while (!g->sync_go && !g->go[w->idx] && !g->abort)
        pthread_cond_wait(&g->cv, &g->mu);
    int do_sync = g->presync && g->sync_go && !g->abort;
    pthread_mutex_unlock(&g->mu);
    if (do_sync)
        worker_presync(g, f, fd);

    pthread_mutex_lock(&g->mu);
    while (!g->go[w->idx] && !g->abort)
        pthread_cond_wait(&g->cv, &g->mu);
    if (g->abort) {
        fs_set_state(f, VMSNAP_FS_SKIPPED);
        pthread_mutex_unlock(&g->mu);
        record_result(g->record_fd, g->sh, w->idx);
        dirty_cap_end_one(f);
        notify(g);
        return NULL;
    }
    f->freeze_start_ns = now_ns();
    first_freeze(g, f->freeze_start_ns);
    fs_set_state(f, VMSNAP_FS_FREEZING);
    pthread_mutex_unlock(&g->mu);
    notify(g); /* the deadline may have moved */

    /* recorded right before the FIFREEZE: should the guardian and the
     * controller both die while it runs, recovery thaws what it froze */
    record_mark_freezing(g->record_fd, g->sh, w->idx);
    int r = vmsnap_fifreeze(fd);
    f->freeze_end_ns = now_ns();
    dirty_cap_end_one(f); /* frozen (or not at all): the cap has done its work */
    if (r < 0) {
        f->freeze_errno = -r;
        /* EBUSY: someone else holds a freeze; it is theirs to thaw. */
        fs_set_state(f, r == -EBUSY ? VMSNAP_FS_BUSY : VMSNAP_FS_FAILED);
        record_result(g->record_fd, g->sh, w->idx); /* busy: never thawed from the record */
        notify(g);
        return NULL;
    }
    fs_set_state(f, VMSNAP_FS_FROZEN);
    record_result(g->record_fd, g->sh, w->idx);
    notify(g);

    pthread_mutex_lock(&g->mu);
    while (g->thaw_level > f->level)
        pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
    fs_thaw_entry(f, fd);
    notify(g);
    return NULL;
}

static void drain_eventfd(struct guardian *g) {
    for (uint64_t v; read(g->evfd, &v, sizeof v) < 0 && errno == EINTR;)
        ;
}

static enum event read_signal(struct guardian *g) {
    struct signalfd_siginfo si;
    if (read(g->sigfd, &si, sizeof si) != sizeof si)
        return EV_PRED; /* nothing after all */
    g->signal_reason = si.ssi_signo == SIGUSR2 ? VMSNAP_THAW_COMMAND : VMSNAP_THAW_SIGNAL;
    return EV_SIGNAL;
}

/* A message from the controller, EV_PRED for none (or an unknown one). */
static enum event read_command(struct guardian *g) {
    enum proto_msg m = 0;
    int r = proto_recv(g->sock, &m);
    if (r == -EAGAIN || r == -EINTR)
        return EV_PRED;
    if (r <= 0) {
        close(g->sock);
        g->sock = -1;
        return g->sh->detached ? EV_PRED : EV_CONTROLLER_GONE;
    }
    switch (m) {
    case CMD_FREEZE: return EV_CMD_FREEZE;
    case CMD_PRESYNC_FREEZE: return EV_CMD_PRESYNC_FREEZE;
    case CMD_THAW: return EV_CMD_THAW;
    case CMD_DETACH: return EV_CMD_DETACH;
    default: return EV_PRED;
    }
}

/* Waits until PRED(g, arg) holds, BOUND (0: none) passes, or something else happens. */
enum event wait_event(struct guardian *g, predicate pred, int arg, int64_t bound) {
    for (;;) {
        if (pred && pred(g, arg))
            return EV_PRED;
        struct pollfd pfd[4];
        int n = 0, sock_i = -1, pid_i = -1;
        pfd[n++] = (struct pollfd){.fd = g->evfd, .events = POLLIN};
        pfd[n++] = (struct pollfd){.fd = g->sigfd, .events = POLLIN};
        if (g->sock >= 0) {
            sock_i = n;
            pfd[n++] = (struct pollfd){.fd = g->sock, .events = POLLIN};
        }
        if (g->ctl_pidfd >= 0 && !g->sh->detached) {
            pid_i = n;
            pfd[n++] = (struct pollfd){.fd = g->ctl_pidfd, .events = POLLIN};
        }
        int r = poll_until(pfd, (nfds_t)n, min_deadline(deadline(g), bound));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return EV_CONTROLLER_GONE; /* cannot watch any more: thaw */
        }
        int64_t now = now_ns();
        if (now >= deadline(g))
            return EV_DEADLINE;
        if (bound > 0 && now >= bound)
            return EV_TIMEOUT;
        enum event ev = EV_PRED;
        if (pfd[1].revents)
            ev = read_signal(g);
        if (ev == EV_PRED && pid_i >= 0 && pfd[pid_i].revents)
            ev = EV_CONTROLLER_GONE;
        if (ev == EV_PRED && sock_i >= 0 && pfd[sock_i].revents)
            ev = read_command(g);
        if (ev != EV_PRED)
            return ev;
        if (pfd[0].revents)
            drain_eventfd(g);
    }
}

/* How many entries with a level in [LO, HI] are in one of the STATES (a bit set). */
int count(struct guardian *g, int lo, int hi, unsigned states) {
    int k = 0;
    for (int i = 0; i < g->sh->n; i++) {
        struct vmsnap_fs *f = &g->sh->fs[i];
        k += f->level >= lo && f->level <= hi && (BIT(fs_get_state(f)) & states);
    }
    return k;
}

static int all_synced(struct guardian *g, int arg) {
    return !count(g, 0, INT_MAX, BIT(VMSNAP_FS_PENDING) | BIT(VMSNAP_FS_SYNCING));
}

/* Nothing at LEVEL or above is frozen or thawing (stuck freezes excepted). */
static int thawed_down_to(struct guardian *g, int level) {
    return !count(g, level, INT_MAX, BIT(VMSNAP_FS_FROZEN) | BIT(VMSNAP_FS_THAWING));
}

static int all_final(struct guardian *g, int arg) {
    return !count(g, 0, INT_MAX, BIT(VMSNAP_FS_FREEZING) | BIT(VMSNAP_FS_FROZEN) | BIT(VMSNAP_FS_THAWING));
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

/* One level of the thaw: its workers thaw in parallel, each through its fd. */
static void thaw_level_by_workers(void *ctx, int level) {
    struct guardian *g = ctx;
    set_phase(g, &g->thaw_level, level);
    wait_workers(g, thawed_down_to, level);
}

static void thaw_all(struct guardian *g, int reason) {
    if (!g->sh->thaw_reason)
        g->sh->thaw_reason = reason;
    set_phase(g, &g->abort, 1);
    dirty_cap_end(g->sh);
    thaw_levels(g->sh, thaw_level_by_workers, g);
}

/* The presync, bounded by presync_timeout_ns: past the bound the freeze goes
 * on, and a flush still running becomes part of its filesystem's freeze. */
static enum event do_presync(struct guardian *g) {
    struct vmsnap_shared *sh = g->sh;
    dirty_cap_begin(sh, g->record_fd);
    sh->presync_start_ns = now_ns();
    g->presync = 1;
    set_phase(g, &g->sync_go, 1);
    int64_t bound = sh->presync_timeout_ns > 0 ? add_saturated(sh->presync_start_ns,
                                                                sh->presync_timeout_ns) : 0;
    enum event ev = wait_event(g, all_synced, 0, bound);
    sh->presync_end_ns = now_ns();
    if (ev == EV_TIMEOUT)
        sh->presync_timed_out = 1;
    return ev == EV_TIMEOUT ? EV_PRED : ev;
}

/* Runs the freeze command; EV_PRED when done, or the event that cut it short. */
static enum event do_freeze(struct guardian *g, int presync) {
    struct vmsnap_shared *sh = g->sh;
    /* until the first FIFREEZE: the presync's bound plus the cap */
    int64_t wait = add_saturated(presync ? sh->presync_timeout_ns : 0, sh->timeout_ns);
    __atomic_store_n(&sh->deadline_ns, add_saturated(now_ns(), wait), __ATOMIC_RELEASE);
    if (presync) {
        enum event ev = do_presync(g);
        if (ev != EV_PRED)
            return ev;
    }
    if (sh->expedite_rcu) {
        rcu_expedite_begin(sh);
        if (sh->rcu_restore >= 0)
            record_write(g->record_fd, sh); /* nothing frozen yet: safe anywhere */
    }
    enum event ev = do_freeze_waves(g);
    rcu_expedite_end(sh);
    return ev;
}

static void reply(struct guardian *g, enum proto_msg m) {
    (void)proto_send(g->sock, m); /* -EBADF once the controller is gone */
}

static int thaw_reason_for(struct guardian *g, enum event ev) {
    switch (ev) {
    case EV_DEADLINE: return VMSNAP_THAW_DEADLINE;
    case EV_CONTROLLER_GONE: return VMSNAP_THAW_CONTROLLER_DIED;
    case EV_SIGNAL: return g->signal_reason;
    default: return VMSNAP_THAW_REQUESTED;
    }
}

static void guardian_loop(struct guardian *g) {
    enum event ev;
    for (;;) {
        ev = wait_event(g, NULL, 0, 0);
        if (ev == EV_CMD_FREEZE || ev == EV_CMD_PRESYNC_FREEZE) {
            enum event r = do_freeze(g, ev == EV_CMD_PRESYNC_FREEZE);
            if (r != EV_PRED) {
                ev = r;
                break;
            }
            if (g->sh->record_live)
                record_write(g->record_fd, g->sh);
            reply(g, REPLY_FROZEN);
            continue;
        }
        if (ev == EV_CMD_DETACH) {
            g->sh->detached = 1; /* `vmsnap thaw` may thaw it without --force */
            if (g->sh->record_live)
                record_write(g->record_fd, g->sh);
            reply(g, REPLY_DETACHED);
            continue;
        }
        break;
    }
    if (ev == EV_DEADLINE)
        g->sh->deadline_hit = 1;
    thaw_all(g, thaw_reason_for(g, ev));
    reply(g, REPLY_THAWED);
    /* A freeze that was stuck in the kernel thaws itself when it returns. */
    wait_workers(g, all_final, 0);
}

static int setup_signals(struct guardian *g) {
    sigset_t all, watched;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL); /* already blocked by the parent; be sure */
    sigemptyset(&watched);
    int sigs[] = {SIGUSR1, SIGUSR2, SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        sigaddset(&watched, sigs[i]);
    g->sigfd = signalfd(-1, &watched, SFD_CLOEXEC);
    g->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return g->sigfd < 0 || g->evfd < 0 ? -EMFILE : 0;
}

static int start_workers(struct guardian *g) {
    static struct worker workers[VMSNAP_MAX_FS];
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int r = 0;
    for (int i = 0; r == 0 && i < g->sh->n; i++) {
        workers[i] = (struct worker){.g = g, .idx = i};
        pthread_t t;
        r = -pthread_create(&t, &attr, worker_main, &workers[i]);
    }
    pthread_attr_destroy(&attr);
    return r;
}

/* The session is over: the record goes if nothing can still be frozen by us. */
static void settle_record(struct guardian *g, const char *record_path) {
    if (!all_final(g, 0))
        return;
    if (!count(g, 0, INT_MAX, BIT(VMSNAP_FS_THAW_FAILED)) && record_path && record_path[0]) {
        /* the last word first, for whoever holds the record open to learn
         * why this freeze ended (`vmsnap thaw --session`: its own thaw, or
         * the deadline); where the record may not be rewritten, it is not */
        if (g->sh->record_live)
            record_write(g->record_fd, g->sh);
        unlink(record_path);
    }
    else if (g->sh->record_live)
        /* a thaw failed: leave the final word for `vmsnap thaw`, unless the
         * record lives on a filesystem we froze (it may still be frozen;
         * the record written before the freeze says enough) */
        record_write(g->record_fd, g->sh);
}

void guardian_main(struct vmsnap_shared *sh, const int32_t *fds, int sock, int ctl_pidfd,
                   int record_fd, const char *record_path) {
    struct guardian g = {
        .sh = sh, .sock = sock, .ctl_pidfd = ctl_pidfd, .record_fd = record_fd,
        .thaw_level = INT_MAX, .sigfd = -1, .evfd = -1,
    };
    int *keep[VMSNAP_MAX_FS + 3] = {&g.sock, &g.ctl_pidfd, &g.record_fd};
    int nkeep = 3;
    for (int i = 0; i < sh->n; i++) {
        g.fds[i] = fds[i];
        keep[nkeep++] = &g.fds[i]; /* renumbered in our copy only */
    }
    helper_detach("vmsnap-guardian", keep, nkeep); /* also: not dumpable */
    _cleanup_close_ int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0)
        (void)!write(oom, "-1000", 5); /* the OOM killer must not take the thaw with it */
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);
    if (setup_signals(&g) < 0 || start_workers(&g) < 0) {
        /* nothing frozen yet: release the workers and report */
        set_phase(&g, &g.abort, 1);
        reply(&g, REPLY_START_FAILED);
        _exit(1);
    }
    reply(&g, REPLY_READY);
    guardian_loop(&g);
    settle_record(&g, record_path);
    __atomic_store_n(&sh->guardian_done, 1, __ATOMIC_RELEASE);
    _exit(0);
}
