/* spawn.c: process supervision.
 *
 * Our own spawn (clone with CLONE_VM|CLONE_VFORK, as posix_spawn does it,
 * but with the child side we need): a new session, default signal
 * dispositions and an empty mask, umask 022, its own cgroup entered before
 * the exec, stdin from /dev/null, stdout+stderr into one pipe, every other
 * fd closed, exec failures reported back.  One poll loop watches the
 * child's pidfd, the output pipe and an absolute deadline.  The wait ends
 * when the child exits, not when its output closes: a background process
 * that inherited the pipe must not hold us (at the close, a drainer takes
 * the pipe over).  On kernels without pidfd a waiter thread blocks in
 * waitid(WNOWAIT) and signals a pipe: the same loop, the same semantics.
 * The tree (contain.c) is signalled as a whole at the deadline.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "compat.h"
#include "contain.h"
#include "helper.h"
#include "procfs.h"
#include "reaper.h"
#include "util.h"
#include "vmsnap.h"

#define WAITER_STACK (64 * 1024) /* the exit waiter thread: one blocking waitid */
#define READ_CHUNK 65536         /* output read from the pipe per read() */

struct exit_waiter {
    pid_t pid;
    int fd;
};

static void *exit_waiter_main(void *arg) {
    struct exit_waiter *w = arg;
    siginfo_t si;
    /* WNOWAIT: the supervising loop reaps, exactly as on the pidfd path */
    while (waitid(P_PID, (id_t)w->pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR)
        ;
    char c = 'x';
    (void)!write(w->fd, &c, 1);
    close(w->fd);
    free(w);
    return NULL;
}

static int start_exit_waiter(struct vmsnap_proc *p) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    struct exit_waiter *w = malloc(sizeof *w);
    if (!w) {
        close(fds[0]);
        close(fds[1]);
        return -ENOMEM;
    }
    *w = (struct exit_waiter){.pid = p->pid, .fd = fds[1]};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, WAITER_STACK);
    pthread_t t;
    int r = pthread_create(&t, &attr, exit_waiter_main, w);
    pthread_attr_destroy(&attr);
    if (r != 0) {
        free(w);
        close(fds[0]);
        close(fds[1]);
        return -r; /* pthread_create returns a positive errno */
    }
    p->exit_fd = fds[0];
    p->used_fallback = 1;
    return 0;
}

/* An fd at 3 or above: the child moves its pipe onto 0-2 with dup2. */
static int fd_above_stdio(int fd) {
    if (fd < 0 || fd > 2)
        return fd;
    int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
    close(fd);
    return moved;
}

/* What the child needs between clone and exec.  It shares our memory
 * (CLONE_VM) and we are suspended until its exec (CLONE_VFORK); it reports
 * a failure through ERR_FD and exits. */
struct child_args {
    const char *path;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    int devnull, out_w, procs_fd;
    int self_register;       /* no cgroup: the child registers its own identity */
    int err_fd;              /* CLOEXEC: {stage, errno} of a failure, EOF at the exec */
    int err, stage;          /* what came through err_fd */
};

#define STAGE_SETUP 1
#define STAGE_CGROUP 2
#define STAGE_CHDIR 3
#define STAGE_EXEC 4

static int child_main(void *arg) {
    struct child_args *a = arg;
    int stage = STAGE_SETUP;
    helper_default_signals(); /* every signal is still blocked (the caller's doing) */
    if (setsid() < 0)
        goto fail;
    umask(CHILD_UMASK);
    stage = STAGE_CGROUP;
    if (a->procs_fd >= 0 && write(a->procs_fd, "0", 1) != 1) /* born in its cgroup */
        goto fail;
    stage = STAGE_SETUP;
    if (dup2(a->devnull, 0) < 0 || dup2(a->out_w, 1) < 0 || dup2(a->out_w, 2) < 0)
        goto fail;
    stage = STAGE_CHDIR;
    if (a->cwd && a->cwd[0] && chdir(a->cwd) < 0)
        goto fail;
    /* only 0-2 go on, whatever we inherited (err_fd closes at the exec) */
    compat_close_range(3, (unsigned)a->err_fd - 1);
    compat_close_range((unsigned)a->err_fd + 1, ~0U);
    /* our parent may have been SIGKILLed since the clone: the reaper knows
     * this child (its cgroup, registered before the clone and joined above,
     * or the identity registered here) or it has begun its kill, and then
     * nothing is run */
    stage = STAGE_SETUP;
    struct procfs_info self;
    pid_t me = getpid();
    /* an attempt of the resume's job in progress: the last attempt's mark
     * goes before the check (one that ended must not speak for this one),
     * this one's after it (the check passed: it runs, or the reaper kills it) */
    int job = reaper_child_job();
    if ((a->self_register || job) && procfs_read(me, &self) < 0)
        goto fail;
    if (job)
        reaper_child_mark(0, 0);
    if (reaper_child_check(a->self_register ? me : 0, a->self_register ? self.starttime : 0) < 0) {
        errno = ESHUTDOWN;
        goto fail;
    }
    if (job)
        reaper_child_mark(me, self.starttime);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    stage = STAGE_EXEC;
    execve(a->path, a->argv, a->envp);
fail:;
    /* through a pipe, not our shared memory: where CLONE_VFORK is emulated
     * by a fork (qemu-user), the memory is not shared */
    int msg[2] = {stage, errno};
    (void)!write(a->err_fd, msg, sizeof msg);
    _exit(exec_failure_status(msg[1])); /* unseen: the parent reports it (spawn_failed) */
}

#define CHILD_STACK (64 * 1024)

/* clone(CLONE_VM|CLONE_VFORK) as posix_spawn does it, with our own child
 * side; CLONE_PIDFD where the kernel (5.2+) and the flags allow.  The child
 * moves itself into its cgroup: measured here (6.18, 2 cores), that costs
 * 0.5 ms a spawn where clone3(CLONE_INTO_CGROUP), a fork of the whole
 * controller, costs 3.8 ms. */
static pid_t clone_child(struct child_args *a, int want_pidfd, int *pidfd) {
    int ep[2];
    if (pipe2(ep, O_CLOEXEC) < 0)
        return -1;
    _cleanup_close_ int err_r = ep[0], err_w = fd_above_stdio(ep[1]);
    char *stack = err_w < 0 ? MAP_FAILED : mmap(NULL, CHILD_STACK, PROT_READ | PROT_WRITE,
                                                MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        return -1;
    a->err_fd = err_w;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* no handler of ours may run in the child */
    int flags = CLONE_VM | CLONE_VFORK | SIGCHLD;
    *pidfd = -1;
    pid_t pid = clone(child_main, stack + CHILD_STACK, flags | (want_pidfd ? CLONE_PIDFD : 0), a,
                      pidfd);
    if (pid < 0 && want_pidfd && errno == EINVAL) /* before 5.2 */
        pid = clone(child_main, stack + CHILD_STACK, flags, a, NULL);
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    munmap(stack, CHILD_STACK);
    close(TAKE_FD(err_w)); /* the child's copy is its only one: EOF at its exec */
    int msg[2];
    ssize_t k = 0;
    while (pid > 0 && (k = read(err_r, msg, sizeof msg)) < 0 && errno == EINTR)
        ;
    if (k == (ssize_t)sizeof msg) {
        a->stage = msg[0];
        a->err = msg[1];
    }
    errno = e;
    return pid;
}

static void spawn_failed(struct vmsnap_proc *p, int err) {
    p->spawn_errno = err;
    p->exit_code = exec_failure_status(err);
    p->exited = p->reaped = 1;
    p->end_ns = p->done_ns = now_ns();
}

int vmsnap_proc_spawn(const char *path, char *const argv[], char *const envp[],
                      const char *cwd, int flags, struct vmsnap_proc *p) {
    p->pid = -1;
    p->pidfd = p->out_fd = p->exit_fd = p->cgroup_fd = -1;
    p->exit_code = -1;
    p->output_total = p->head_len = p->tail_len = p->tail_pos = 0;
    p->n_tracked = p->drainer_pid = 0;
    p->exited = p->reaped = 0;
    p->start_ns = now_ns();

    /* Not runnable: say so precisely, with nothing to undo. */
    if (access(path, X_OK) < 0) {
        spawn_failed(p, errno);
        return 0;
    }
    _cleanup_close_ int out_r = -1, out_w = -1, devnull = -1, procs_fd = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    out_r = fds[0];
    out_w = fd_above_stdio(fds[1]);
    devnull = fd_above_stdio(open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (out_w < 0 || devnull < 0)
        return -errno;

    int want_pidfd = !(flags & VMSNAP_SPAWN_NO_PIDFD) && !(vmsnap_compat_disabled & VMSNAP_COMPAT_NO_PIDFD);
    pid_t pid;
    int pidfd;
    struct child_args a;
    for (int allow_cgroup = 1;; allow_cgroup = 0) {
        contain_setup(p, &procs_fd, allow_cgroup);
        /* our reaper knows the cgroup before anything runs in it: a SIGKILL
         * of ours at any instant from here on still kills the child */
        int slot = p->containment == VMSNAP_CONTAIN_CGROUP ? reaper_prewatch_cgroup(p->cgroup) : -1;
        a = (struct child_args){.path = path, .argv = argv, .envp = envp, .cwd = cwd,
                                .devnull = devnull, .out_w = out_w, .procs_fd = procs_fd,
                                .self_register = p->containment != VMSNAP_CONTAIN_CGROUP};
        pid = clone_child(&a, want_pidfd, &pidfd);
        reaper_prewatch_done(slot, pid > 0 && !a.err ? pid : 0);
        if (pid < 0) {
            int e = errno;
            contain_cgroup_failed(p);
            return -e;
        }
        if (!a.err)
            break;
        waitpid(pid, NULL, 0); /* it never ran anything */
        if (pidfd >= 0)
            close(pidfd);
        contain_cgroup_failed(p);
        if (a.stage != STAGE_CGROUP) {
            if (a.stage == STAGE_SETUP)
                return -a.err;
            spawn_failed(p, a.err);
            return 0;
        }
        closep(&procs_fd); /* the cgroup refused it: the next containment down */
    }
    p->pid = pid;
    p->pidfd = pidfd;
    struct procfs_info info;
    if (procfs_read(pid, &info) == 0)
        p->starttime = info.starttime;
    helper_note_child(pid, p->starttime); /* not an orphan of another child's tree */
    if (p->containment != VMSNAP_CONTAIN_CGROUP)
        /* the identity, at once (vmsnap_reaper_watch adds what it starts later) */
        (void)vmsnap_reaper_watch_identity(pid, pid, p->starttime, pid);
    fcntl(out_r, F_SETFL, fcntl(out_r, F_GETFL) | O_NONBLOCK);
    p->out_fd = TAKE_FD(out_r);

    if (p->pidfd < 0 && !(flags & VMSNAP_SPAWN_NO_PIDFD))
        p->pidfd = compat_pidfd_open(pid);
    if (p->pidfd < 0) {
        int r = start_exit_waiter(p);
        if (r < 0) {
            /* cannot supervise: do not leave it running unsupervised */
            contain_kill(p);
            waitpid(pid, NULL, 0);
            p->reaped = 1;
            vmsnap_proc_close(p);
            vmsnap_proc_release(p);
            return r;
        }
    }
    return 0;
}

static void store_output(struct vmsnap_proc *p, const char *buf, size_t n) {
    p->output_total += n;
    size_t room = (size_t)(p->head_cap - p->head_len);
    size_t h = n < room ? n : room;
    if (h) {
        memcpy(p->head + p->head_len, buf, h);
        p->head_len += h;
        buf += h;
        n -= h;
    }
    if (!n || !p->tail_cap)
        return;
    size_t cap = (size_t)p->tail_cap;
    if (n >= cap) {
        memcpy(p->tail, buf + n - cap, cap);
        p->tail_pos = 0;
        p->tail_len = cap;
        return;
    }
    size_t pos = (size_t)p->tail_pos;
    size_t first = n < cap - pos ? n : cap - pos;
    memcpy(p->tail + pos, buf, first);
    memcpy(p->tail, buf + first, n - first);
    p->tail_pos = (pos + n) % cap;
    p->tail_len = p->tail_len + n > cap ? cap : p->tail_len + n;
}

/* Reads what the pipe holds now; closes it at EOF. */
static void drain_output(struct vmsnap_proc *p) {
    char buf[READ_CHUNK];
    while (p->out_fd >= 0) {
        ssize_t k = read(p->out_fd, buf, sizeof buf);
        if (k > 0) {
            store_output(p, buf, (size_t)k);
            continue;
        }
        if (k < 0 && errno == EINTR)
            continue;
        if (k == 0 || errno != EAGAIN) {
            close(p->out_fd);
            p->out_fd = -1;
        }
        return;
    }
}

/* Learns how the child ended; with KEEP the zombie stays (its pid, and so
 * its group id, cannot be reused while we still signal the group). */
static void collect(struct vmsnap_proc *p, int keep) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    do
        r = waitid(P_PID, (id_t)p->pid, &si, WEXITED | (keep ? WNOWAIT : 0));
    while (r < 0 && errno == EINTR);
    if (!p->exited)
        p->end_ns = now_ns();
    p->exited = 1;
    if (!keep) {
        p->reaped = 1;
        helper_forget_child(p->pid);
    }
    if (r < 0)
        return; /* someone else reaped it; nothing more to learn */
    if (si.si_code == CLD_EXITED) {
        p->exit_code = si.si_status;
        p->term_signal = 0;
    } else {
        p->exit_code = -1;
        p->term_signal = si.si_status;
    }
}

/* Past the deadline: TERM (and CONT, so a stopped process sees it) to the
 * whole tree; KILL after the grace period. */
static void enforce_deadline(struct vmsnap_proc *p, int64_t now, int64_t grace_ns) {
    if (!p->term_sent && p->deadline_ns > 0 && now >= p->deadline_ns && !p->exited) {
        p->timed_out = 1;
        p->term_sent = 1;
        contain_signal(p, SIGTERM);
        contain_signal(p, SIGCONT);
        p->kill_at_ns = now + (grace_ns > 0 ? grace_ns : 0);
    }
    if (p->term_sent && now >= p->kill_at_ns) {
        p->kill_sent = 1;
        contain_kill(p); /* again on each turn: catches what forked meanwhile */
    }
}

#define TREE_POLL_NS 10000000LL  /* how often a dying tree is looked at */
#define UNKILLABLE_NS 2000000000LL /* SIGKILLed and still there: D state, report it */

int vmsnap_proc_wait(struct vmsnap_proc *p, int64_t deadline_ns, int64_t grace_ns) {
    p->deadline_ns = deadline_ns;
    if (p->pid <= 0) /* exec failed: nothing ran */
        return 0;
    for (;;) {
        int64_t now = now_ns();
        enforce_deadline(p, now, grace_ns);
        if (p->exited) {
            drain_output(p);
            if (!p->timed_out)
                break;
            /* a timed-out tree is done only when no member is left alive */
            int live = contain_signal(p, 0);
            if (live <= 0)
                break;
            if (p->kill_sent && now - p->kill_at_ns > UNKILLABLE_NS) {
                p->group_alive = live;
                break;
            }
        }
        struct pollfd pfd[2];
        int n = 0, exit_i = -1, out_i = -1;
        if (p->out_fd >= 0) {
            out_i = n;
            pfd[n++] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
        }
        if (!p->exited) {
            exit_i = n;
            pfd[n++] = (struct pollfd){.fd = p->pidfd >= 0 ? p->pidfd : p->exit_fd, .events = POLLIN};
        }
        int64_t wake;
        if (!p->term_sent)
            wake = p->deadline_ns;
        else if (!p->kill_sent)
            wake = min_deadline(p->kill_at_ns, p->exited ? now + TREE_POLL_NS : 0);
        else
            wake = now + TREE_POLL_NS;
        int r = poll_until(pfd, (nfds_t)n, wake);
        if (r < 0) {
            if (errno == EINTR)
                return -EINTR;
            return -errno;
        }
        if (out_i >= 0 && pfd[out_i].revents)
            drain_output(p);
        if (exit_i >= 0 && pfd[exit_i].revents) {
            drain_output(p); /* everything written before the exit is in the pipe */
            /* not reaped yet: a timed-out tree is still being killed by group,
             * and without a cgroup its members are found through it */
            collect(p, 1);
            if (p->containment != VMSNAP_CONTAIN_CGROUP && !p->timed_out)
                contain_signal(p, 0); /* tracks what it left running */
            if (!p->timed_out)
                collect(p, 0);
        }
    }
    if (!p->reaped)
        collect(p, 0);
    p->done_ns = now_ns();
    return 0;
}

void vmsnap_proc_close(struct vmsnap_proc *p) {
    if (p->out_fd >= 0 && !p->timed_out) {
        drain_output(p);
        if (p->out_fd >= 0) /* still held by what it left running */
            contain_hand_off_output(p);
    }
    if (p->out_fd >= 0)
        close(p->out_fd);
    if (p->pidfd >= 0)
        close(p->pidfd);
    if (p->exit_fd >= 0)
        close(p->exit_fd);
    p->out_fd = p->pidfd = p->exit_fd = -1;
}
