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
 * guardians: their thaw comes first), starts it and waits for it, so that
 * what keeps it from running (it cannot be executed, its interpreter cannot
 * import the package, a traceback) reaches the run's log: nobody else is
 * left to tell.
 *
 * How fast: the reaper sleeps in poll() at nice -10, so that on a busy
 * host it is the first to run once the controller is gone; the kill is one
 * cgroup.kill write per tree.  A script or snapshot step is gone (dead or
 * a zombie) well within 0.5 s of the controller's SIGKILL
 * (tests/test_reaper_speed.py measures it at random instants of a run).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>

#include "compat.h"
#include "contain.h"
#include "helper.h"
#include "procfs.h"
#include "reaper.h"
#include "util.h"
#include "vmsnap.h"

#define SLOT_FREE 0
#define SLOT_BUSY 1 /* being written or cleared by the controller */
#define SLOT_LIVE 2
#define RESUME_MAX_STRINGS 1024
#define RESUME_NOTE_EVERY_S 60   /* a log line while it waits for a guardian */
#define RESUME_STDERR_KEPT 2048  /* the tail of the command's stderr that is logged */
#define REAPER_NICE (-10)

struct reaper_entry {
    int32_t state;
    int32_t key;
    int32_t pid;       /* 0: a cgroup entry */
    int32_t pgid;      /* killed while the identity is alive in it; 0: none */
    uint64_t starttime;
    char cgroup[VMSNAP_CGROUP_PATH_MAX];
};

struct reaper_resume {
    uint64_t job_done; /* its jobs that have run (vmsnap_reaper_resume_job_done) */
    int32_t argc, envc, n_wait;
    int32_t wait_pid[VMSNAP_RESUME_WAIT_MAX];
    uint64_t wait_start[VMSNAP_RESUME_WAIT_MAX];
    char strings[VMSNAP_RESUME_MAX]; /* argv then envp, each NUL-terminated */
    char log_path[VMSNAP_PATH_MAX];  /* "": the system log */
};

struct reaper_shared {
    struct reaper_entry slot[VMSNAP_REAPER_SLOTS];
    /* the registered resume and the one written beside it: a new one is
     * written into the other, then switched to (resume_live), so that a
     * death at any instant of the update leaves the old or the new one */
    struct reaper_resume resume[2];
    int32_t resume_live; /* 1 + the index of the registered one; 0: none */
    int32_t closing; /* set by the reaper before it reads the table to kill */
    /* the registered resume's job in progress (vmsnap_reaper_resume_job_*):
     * its arguments, and its latest attempt (pid last) */
    uint64_t job_next, mark_args, mark_start;
    int32_t mark_pid;
};

/* This process's table, shared with its reaper (one reaper per process). */
static struct reaper_shared *shared;

/* Tests only (ctest.c): called in vmsnap_reaper_set_resume between the new
 * resume's write and the switch to it. */
void (*vmsnap_reaper_test_before_switch)(void);

/* The registered resume, or NULL. */
static struct reaper_resume *live_resume(struct reaper_shared *sh) {
    int live = __atomic_load_n(&sh->resume_live, __ATOMIC_ACQUIRE);
    return live == 1 || live == 2 ? &sh->resume[live - 1] : NULL;
}

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

/* One line in the run's log, in its format (logbook.py), or in the system
 * log when there is none or it cannot be written: the controller is dead,
 * nobody reads our stderr. */
__attribute__((format(printf, 3, 4)))
static void reaper_log(const char *path, const char *level, const char *fmt, ...) {
    char msg[3072];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    _cleanup_close_ int fd = -1;
    if (path && path[0]) {
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
        struct stat st;
        /* the checks of logbook.py: a plain file of root's, no link */
        if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_uid != geteuid() ||
                        st.st_nlink != 1))
            closep(&fd), fd = -1;
    }
    if (fd < 0) {
        openlog("vmsnap-reaper", LOG_PID, LOG_DAEMON);
        syslog(level[0] == 'E' ? LOG_ERR : LOG_WARNING, "%s", msg);
        closelog();
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char line[3200];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ vmsnap-reaper[%d] %s %s\n",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, (int)getpid(), level, msg);
    if (n > 0)
        (void)!write(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

/* Until PID (with START) is gone: no bound.  A guardian thaws at its own
 * deadline and exits; one alive past it is inside a FIFREEZE or FITHAW the
 * kernel has not returned from, and what the resume would write to that
 * filesystem would block (in D state, holding the run lock).  Said in the
 * log every RESUME_NOTE_EVERY_S seconds. */
static void wait_gone(int pid, uint64_t start, const char *log_path, int64_t since) {
    _cleanup_close_ int fd = compat_pidfd_open(pid);
    int64_t note = now_ns() + RESUME_NOTE_EVERY_S * 1000000000LL;
    while (vmsnap_process_matches(pid, start)) {
        if (now_ns() >= note) {
            reaper_log(log_path, "WARNING", "resume: waiting for the freeze guardian (pid %d), "
                       "still alive %lld s after vmsnap died: its filesystem is still in a "
                       "freeze or thaw the kernel has not finished; the post-script runs once "
                       "it has thawed and exited", pid, (long long)((now_ns() - since) / 1000000000LL));
            note += RESUME_NOTE_EVERY_S * 1000000000LL;
        }
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (fd >= 0)
            poll_until(&pfd, 1, min_deadline(note, now_ns() + 1000000000LL));
        else
            usleep(20000);
    }
}

/* In the resume command's child: never returns. */
__attribute__((noreturn)) static void exec_resume(char **argv, char **envp, int err_w, int exec_w) {
    setsid();
    umask(CHILD_UMASK);
    helper_default_signals();
    setpriority(PRIO_PROCESS, 0, 0); /* the scripts run at the usual priority */
    int oom = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (oom >= 0) {
        (void)!write(oom, "0", 1); /* ours is -1000: not for what the scripts start */
        close(oom);
    }
    int devnull = open("/dev/null", O_RDWR);
    if (devnull >= 0) {
        dup2(devnull, 0);
        dup2(devnull, 1);
    }
    /* stderr to the reaper, the exec-failure pipe at 3 (close-on-exec), nothing else */
    int high = fcntl(exec_w, F_DUPFD_CLOEXEC, 10);
    dup2(err_w, 2);
    if (high < 0 || dup2(high, 3) < 0)
        _exit(EXIT_NOT_EXECUTABLE);
    fcntl(3, F_SETFD, FD_CLOEXEC);
    exec_w = 3;
    compat_close_range(4, ~0U);
    int e = 0;
    if (chdir("/") < 0)
        e = errno;
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (!e) {
        execve(argv[0], argv, envp);
        e = errno;
    }
    (void)!write(exec_w, &e, sizeof e);
    _exit(exec_failure_status(e));
}

/* The last line of what the command wrote to stderr that says something
 * (a traceback ends with the error), with the one before it for context. */
static const char *stderr_summary(char *buf, size_t len) {
    while (len && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
        buf[--len] = 0;
    buf[len] = 0;
    for (size_t i = 0; i < len; i++)
        if (buf[i] == '\n')
            buf[i] = '|';
    char *last = strrchr(buf, '|');
    if (last) {
        *last = 0;
        char *prev = strrchr(buf, '|');
        *last = '|';
        return prev ? prev + 1 : buf;
    }
    return buf;
}

/* The resume's arguments to drop: the jobs that have run, and the marked
 * attempt's job if that attempt had ended by our controller's death.  The
 * attempt is stopped first (it cannot end between the look and the kill
 * that follows): an attempt stopped or in the kernel is still running,
 * and its job runs again. */
static uint64_t jobs_that_ran(struct reaper_shared *sh) {
    struct reaper_resume *r = live_resume(sh);
    uint64_t drop = r ? __atomic_load_n(&r->job_done, __ATOMIC_SEQ_CST) : 0;
    int pid = __atomic_load_n(&sh->mark_pid, __ATOMIC_SEQ_CST);
    if (pid <= 0)
        return drop;
    uint64_t start = sh->mark_start, args = sh->mark_args;
    _cleanup_close_ int fd = compat_pidfd_open(pid);
    if (fd >= 0 && vmsnap_process_matches(pid, start))
        compat_pidfd_send_signal(fd, SIGSTOP);
    for (int64_t until = now_ns() + 1000000000LL;;) {
        struct procfs_info info;
        if (procfs_read(pid, &info) < 0 || info.starttime != start || info.state == 'Z' ||
            info.state == 'X')
            return drop | args; /* it had ended: its job has run */
        if (info.state == 'T' || info.state == 't' || now_ns() >= until)
            return drop; /* still running: killed below, run again */
        usleep(1000);
    }
}

static void run_resume(struct reaper_resume *r, uint64_t drop, int64_t died_ns) {
    if (!r)
        return;
    const char *log_path = r->log_path;
    for (int i = 0; i < r->n_wait; i++)
        wait_gone(r->wait_pid[i], r->wait_start[i], log_path, died_ns);
    char *argv[RESUME_MAX_STRINGS + 1], *envp[RESUME_MAX_STRINGS + 1];
    char *s = r->strings;
    int argc = 0;
    for (int i = 0; i < r->argc; i++, s += strlen(s) + 1)
        if (i >= 64 || !(drop >> i & 1))
            argv[argc++] = s;
    argv[argc] = NULL;
    for (int i = 0; i < r->envc; i++, s += strlen(s) + 1)
        envp[i] = s;
    envp[r->envc] = NULL;
    const char *what = argc > 2 ? argv[2] : argv[0]; /* python -m MODULE or -c CODE: what runs */
    int errp[2], execp[2];
    if (pipe2(errp, O_CLOEXEC) < 0 || pipe2(execp, O_CLOEXEC) < 0) {
        reaper_log(log_path, "ERROR", "resume: cannot start %s: %s; the application was not "
                   "resumed: run the post-script by hand", argv[0], strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid == 0)
        exec_resume(argv, envp, errp[1], execp[1]);
    int fork_errno = errno;
    close(errp[1]);
    close(execp[1]);
    _cleanup_close_ int err_r = errp[0], exec_r = execp[0];
    if (pid < 0) {
        reaper_log(log_path, "ERROR", "resume: cannot start %s: %s; the application was not "
                   "resumed: run the post-script by hand", argv[0], strerror(fork_errno));
        return;
    }
    int exec_errno = 0;
    ssize_t k;
    while ((k = read(exec_r, &exec_errno, sizeof exec_errno)) < 0 && errno == EINTR)
        ;
    if (k != (ssize_t)sizeof exec_errno)
        exec_errno = 0; /* EOF at the exec: it runs */
    /* keep the tail of its stderr until it exits (the pipe may outlive it
     * in something it started: the exit decides, not the EOF) */
    char tail[RESUME_STDERR_KEPT + 1];
    size_t len = 0;
    _cleanup_close_ int pidfd = compat_pidfd_open(pid);
    fcntl(err_r, F_SETFL, O_NONBLOCK);
    int status = 0, done = 0;
    while (!done) {
        struct pollfd pfd[2] = {{.fd = err_r, .events = POLLIN}, {.fd = pidfd, .events = POLLIN}};
        if (poll(pfd, pidfd >= 0 ? 2 : 1, pidfd >= 0 && err_r >= 0 ? -1 : 100) < 0 && errno != EINTR)
            break;
        for (;;) {
            char buf[1024];
            ssize_t n = err_r >= 0 ? read(err_r, buf, sizeof buf) : -1;
            if (n == 0)
                closep(&err_r), err_r = -1;
            if (n <= 0)
                break;
            _Static_assert(sizeof buf <= RESUME_STDERR_KEPT, "a read fits the tail");
            if (len + (size_t)n > RESUME_STDERR_KEPT) {
                size_t drop = len + (size_t)n - RESUME_STDERR_KEPT;
                memmove(tail, tail + drop, len - drop);
                len -= drop;
            }
            memcpy(tail + len, buf, (size_t)n);
            len += (size_t)n;
        }
        pid_t w = waitpid(pid, &status, WNOHANG);
        done = w == pid || (w < 0 && errno == ECHILD);
        if (!done && err_r < 0 && pidfd < 0)
            usleep(100000);
    }
    tail[len] = 0;
    if (exec_errno) {
        reaper_log(log_path, "ERROR", "resume: cannot start %s: %s; the application was not "
                   "resumed: run the post-script by hand", argv[0], strerror(exec_errno));
    } else if (WIFSIGNALED(status)) {
        reaper_log(log_path, "ERROR", "resume: %s was killed by signal %d%s%s; the application "
                   "may not have been resumed: run the post-script by hand", what,
                   WTERMSIG(status), len ? ": " : "", len ? stderr_summary(tail, len) : "");
    } else if (WEXITSTATUS(status) != 0 && len) {
        reaper_log(log_path, "ERROR", "resume: %s failed (exit %d): %s; the application may not "
                   "have been resumed: run the post-script by hand", what, WEXITSTATUS(status),
                   stderr_summary(tail, len));
    }
    /* exit 1 without a word on stderr: it logged why itself */
}

__attribute__((noreturn)) static void reaper_main(int sock, int ctl_pidfd, struct reaper_shared *sh) {
    pid_t controller = getppid();
    int *keep[] = {&sock, &ctl_pidfd};
    helper_detach("vmsnap-reaper", keep, 2);
    /* asleep until the controller dies; then first in line on a busy host */
    setpriority(PRIO_PROCESS, 0, REAPER_NICE);
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
    int64_t died = now_ns();
    /* from here a child cloned by the dead controller that has not exec'd
     * yet sees that it must not run (reaper_child_check): either it
     * registered itself before this store and the kill below finds it, or
     * it sees the store (both sides order store-then-load, sequentially
     * consistent) */
    __atomic_store_n(&sh->closing, 1, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t ran = jobs_that_ran(sh); /* before the kill, which ends attempts too */
    kill_registered(sh);
    contain_cgroup_sweep(controller); /* its cgroups that are empty now */
    setpriority(PRIO_PROCESS, 0, 0);
    run_resume(live_resume(sh), ran, died);
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

int reaper_prewatch_cgroup(const char *cgroup) {
    if (!shared || !cgroup || !cgroup[0])
        return -EINVAL;
    for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++) {
        struct reaper_entry *e = &shared->slot[i];
        int32_t expected = SLOT_FREE;
        if (!__atomic_compare_exchange_n(&e->state, &expected, SLOT_BUSY, 0, __ATOMIC_ACQUIRE,
                                         __ATOMIC_RELAXED))
            continue;
        e->key = 0; /* no key yet: only the reaper's kill sees it */
        e->pid = e->pgid = 0;
        e->starttime = 0;
        snprintf(e->cgroup, sizeof e->cgroup, "%s", cgroup);
        __atomic_store_n(&e->state, SLOT_LIVE, __ATOMIC_RELEASE);
        return i;
    }
    return -ENOSPC;
}

void reaper_prewatch_done(int slot, int pid) {
    if (!shared || slot < 0 || slot >= VMSNAP_REAPER_SLOTS)
        return;
    struct reaper_entry *e = &shared->slot[slot];
    if (pid > 0) {
        __atomic_store_n(&e->key, pid, __ATOMIC_RELEASE);
        return;
    }
    __atomic_store_n(&e->state, SLOT_FREE, __ATOMIC_RELEASE);
}

int reaper_child_check(int pid, uint64_t starttime) {
    if (!shared)
        return 0;
    if (pid > 0)
        (void)add_entry(pid, pid, starttime, pid, NULL); /* full: the parent's own try fails */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&shared->closing, __ATOMIC_SEQ_CST) ? -ESHUTDOWN : 0;
}

int reaper_child_job(void) {
    return shared && __atomic_load_n(&shared->job_next, __ATOMIC_SEQ_CST) != 0;
}

void reaper_child_mark(int pid, uint64_t starttime) {
    if (!shared)
        return;
    uint64_t args = __atomic_load_n(&shared->job_next, __ATOMIC_SEQ_CST);
    __atomic_store_n(&shared->mark_pid, 0, __ATOMIC_SEQ_CST);
    if (!args || pid <= 0)
        return;
    shared->mark_start = starttime;
    shared->mark_args = args;
    __atomic_store_n(&shared->mark_pid, pid, __ATOMIC_SEQ_CST);
}

void vmsnap_reaper_resume_job_begin(uint64_t args) {
    if (!shared)
        return;
    __atomic_store_n(&shared->job_next, args, __ATOMIC_SEQ_CST);
    if (!args)
        __atomic_store_n(&shared->mark_pid, 0, __ATOMIC_SEQ_CST);
}

void vmsnap_reaper_resume_job_done(uint64_t args) {
    if (!shared)
        return;
    struct reaper_resume *r = live_resume(shared);
    if (r)
        __atomic_fetch_or(&r->job_done, args, __ATOMIC_SEQ_CST);
    __atomic_store_n(&shared->job_next, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&shared->mark_pid, 0, __ATOMIC_SEQ_CST);
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
    /* the new entries first, then the old ones go: at no instant is the
     * tree unknown to the reaper (only with the table nearly full, the old
     * ones go first) */
    int old[VMSNAP_REAPER_SLOTS], n_old = 0;
    if (mine && n > free_slots) {
        vmsnap_reaper_unwatch(p->pid);
    } else {
        for (int i = 0; i < VMSNAP_REAPER_SLOTS; i++)
            if (__atomic_load_n(&shared->slot[i].state, __ATOMIC_ACQUIRE) == SLOT_LIVE &&
                shared->slot[i].key == p->pid)
                old[n_old++] = i;
    }
    int r = 0;
    for (int i = 0; i < n && r == 0; i++)
        r = p->containment == VMSNAP_CONTAIN_CGROUP
                ? add_entry(p->pid, 0, 0, 0, p->cgroup)
                : add_entry(p->pid, pids[i], starts[i], p->pid, NULL);
    for (int i = 0; i < n_old; i++) {
        struct reaper_entry *e = &shared->slot[old[i]];
        int32_t expected = SLOT_LIVE;
        if (e->key == p->pid && __atomic_compare_exchange_n(&e->state, &expected, SLOT_BUSY, 0,
                                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            e->key = 0;
            __atomic_store_n(&e->state, SLOT_FREE, __ATOMIC_RELEASE);
        }
    }
    return r; /* < 0: another thread took the slots meanwhile */
}

int vmsnap_reaper_set_resume(char *const argv[], char *const envp[], const int32_t *wait_pids,
                             const uint64_t *wait_starttimes, int n_wait, const char *log_path) {
    if (!shared)
        return -EINVAL;
    /* a job in progress is forgotten (its attempt, if we die, runs again):
     * its arguments are the old command's indices */
    __atomic_store_n(&shared->job_next, 0, __ATOMIC_SEQ_CST);
    __atomic_store_n(&shared->mark_pid, 0, __ATOMIC_SEQ_CST);
    if (!argv || !argv[0]) {
        __atomic_store_n(&shared->resume_live, 0, __ATOMIC_RELEASE);
        return 0;
    }
    size_t total = 0;
    int argc = 0, envc = 0;
    for (; argv[argc]; argc++)
        total += strlen(argv[argc]) + 1;
    for (; envp && envp[envc]; envc++)
        total += strlen(envp[envc]) + 1;
    /* written beside the registered one, which stays registered meanwhile */
    int idx = __atomic_load_n(&shared->resume_live, __ATOMIC_ACQUIRE) == 1 ? 1 : 0;
    struct reaper_resume *r = &shared->resume[idx];
    if (total > sizeof r->strings || argc + envc > RESUME_MAX_STRINGS || n_wait < 0 ||
        n_wait > VMSNAP_RESUME_WAIT_MAX || (log_path && strlen(log_path) >= sizeof r->log_path))
        return -E2BIG; /* what was set stays set */
    __atomic_store_n(&r->job_done, 0, __ATOMIC_SEQ_CST);
    char *s = r->strings;
    for (int i = 0; i < argc; i++)
        s = stpcpy(s, argv[i]) + 1;
    for (int i = 0; i < envc; i++)
        s = stpcpy(s, envp[i]) + 1;
    snprintf(r->log_path, sizeof r->log_path, "%s", log_path ? log_path : "");
    r->argc = argc;
    r->envc = envc;
    r->n_wait = n_wait;
    for (int i = 0; i < n_wait; i++) {
        r->wait_pid[i] = wait_pids[i];
        r->wait_start[i] = wait_starttimes[i];
    }
    if (vmsnap_reaper_test_before_switch)
        vmsnap_reaper_test_before_switch();
    __atomic_store_n(&shared->resume_live, idx + 1, __ATOMIC_RELEASE); /* the switch */
    return 0;
}
