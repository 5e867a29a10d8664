/* spawn.c: process supervision.
 *
 * posix_spawn into a new session (so the child leads its own process
 * group), stdin from /dev/null, stdout+stderr into one pipe, default signal
 * dispositions and an empty mask.  One poll loop watches the child's pidfd,
 * the output pipe and an absolute deadline.  The wait ends when the child
 * exits, not when its output closes: a background process that inherited
 * the pipe must not hold us.  On kernels without pidfd a waiter thread
 * blocks in waitid(WNOWAIT) and signals a pipe: the same loop, the same
 * semantics.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>

#include "compat.h"
#include "procfs.h"
#include "util.h"
#include "vmsnap.h"

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
    pthread_attr_setstacksize(&attr, 64 * 1024);
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

int vmsnap_proc_spawn(const char *path, char *const argv[], char *const envp[],
                      const char *cwd, int flags, struct vmsnap_proc *p) {
    p->pid = -1;
    p->pidfd = -1;
    p->out_fd = -1;
    p->exit_fd = -1;
    p->exit_code = -1;
    p->output_total = p->head_len = p->tail_len = p->tail_pos = 0;
    p->n_members = 0;

    /* Not runnable: say so precisely.  posix_spawn reports exec failures
     * itself on current glibc, but not everywhere (glibc before 2.24, or
     * under qemu-user, where the child then just exits 127). */
    if (access(path, X_OK) < 0) {
        p->spawn_errno = errno;
        p->exit_code = errno == ENOENT || errno == ENOTDIR ? 127 : 126;
        p->exited = 1;
        p->start_ns = p->end_ns = p->done_ns = now_ns();
        return 0;
    }

    _cleanup_close_ int out_r = -1, out_w = -1;
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return -errno;
    out_r = fds[0];
    out_w = fds[1];

    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, out_w, 1);
    posix_spawn_file_actions_adddup2(&fa, out_w, 2);
    char **sh_argv = NULL;
    if (cwd && cwd[0]) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 29))
        if (!(vmsnap_compat_disabled & VMSNAP_COMPAT_NO_ADDCHDIR))
            posix_spawn_file_actions_addchdir_np(&fa, cwd);
        else
#endif
        {
            /* no addchdir in this libc: let a shell change directory, then exec */
            size_t n = 0;
            while (argv[n])
                n++;
            sh_argv = calloc(n + 6, sizeof *sh_argv);
            if (!sh_argv) {
                posix_spawn_file_actions_destroy(&fa);
                posix_spawnattr_destroy(&attr);
                return -ENOMEM;
            }
            sh_argv[0] = "/bin/sh";
            sh_argv[1] = "-c";
            sh_argv[2] = "cd -- \"$1\" && shift && exec \"$@\"";
            sh_argv[3] = "sh";
            sh_argv[4] = (char *)cwd;
            sh_argv[5] = (char *)path;
            for (size_t i = 1; i < n; i++)
                sh_argv[5 + i] = argv[i];
            path = "/bin/sh";
            argv = sh_argv;
        }
    }
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);

    p->start_ns = now_ns();
    pid_t pid;
    /* posix_spawn returns a positive errno, and reports exec failures
     * (ENOENT, EACCES, ENOEXEC) this way too: glibc waits for the exec. */
    int r = posix_spawn(&pid, path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    free(sh_argv);
    if (r != 0) {
        p->spawn_errno = r;
        p->exit_code = r == ENOENT ? 127 : 126; /* as a shell reports them */
        p->exited = 1;
        p->end_ns = p->done_ns = now_ns();
        return 0;
    }
    p->pid = pid;
    int fl = fcntl(out_r, F_GETFL);
    fcntl(out_r, F_SETFL, fl | O_NONBLOCK);
    p->out_fd = TAKE_FD(out_r);

    if (!(flags & VMSNAP_SPAWN_NO_PIDFD))
        p->pidfd = compat_pidfd_open(pid);
    if (p->pidfd < 0) {
        r = start_exit_waiter(p);
        if (r < 0) {
            /* cannot supervise: do not leave it running unsupervised */
            kill(-pid, SIGKILL);
            waitpid(pid, NULL, 0);
            close(p->out_fd);
            p->out_fd = -1;
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
    char buf[65536];
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

static void reap(struct vmsnap_proc *p) {
    siginfo_t si;
    memset(&si, 0, sizeof si);
    int r;
    do
        r = waitid(P_PID, (id_t)p->pid, &si, WEXITED);
    while (r < 0 && errno == EINTR);
    p->end_ns = now_ns();
    p->exited = 1;
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

/* Calls FN(pid, arg) for every live (non-zombie) process in group PGID;
 * returns how many there are. */
static int for_each_member(int pgid, void (*fn)(int pid, void *arg), void *arg) {
    if (kill(-pgid, 0) < 0 && errno == ESRCH)
        return 0;
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        int pid = atoi(e->d_name);
        char buf[512], state;
        char *rest = procfs_stat(pid, buf, sizeof buf);
        int ppid, pgrp;
        if (!rest || sscanf(rest, " %c %d %d", &state, &ppid, &pgrp) != 3)
            continue;
        if (pgrp == pgid && state != 'Z' && state != 'X') {
            count++;
            if (fn)
                fn(pid, arg);
        }
    }
    closedir(d);
    return count;
}

int vmsnap_group_live_count(int pgid) {
    return for_each_member(pgid, NULL, NULL);
}

static void watch_member(int pid, void *arg) {
    struct vmsnap_proc *p = arg;
    if (p->n_members >= 64)
        return;
    int fd = compat_pidfd_open(pid);
    if (fd >= 0)
        p->member_fds[p->n_members++] = fd;
}

static void close_members(struct vmsnap_proc *p) {
    for (int i = 0; i < p->n_members; i++)
        close(p->member_fds[i]);
    p->n_members = 0;
}

int vmsnap_proc_signal_group(struct vmsnap_proc *p, int sig) {
    if (p->pid <= 0)
        return -ESRCH;
    return kill(-p->pid, sig) < 0 ? -errno : 0;
}

/* Past the deadline: TERM (and CONT, so a stopped process sees it) to the
 * whole group; KILL after the grace period. */
static void enforce_deadline(struct vmsnap_proc *p, int64_t now, int64_t grace_ns) {
    if (!p->term_sent && p->deadline_ns > 0 && now >= p->deadline_ns && !p->exited) {
        p->timed_out = 1;
        p->term_sent = 1;
        kill(-p->pid, SIGTERM);
        kill(-p->pid, SIGCONT);
        p->kill_at_ns = now + (grace_ns > 0 ? grace_ns : 0);
    }
    if (p->term_sent && !p->kill_sent && now >= p->kill_at_ns) {
        p->kill_sent = 1;
        kill(-p->pid, SIGKILL);
    }
}

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
            /* A timed-out group is done only when no member is left alive.
             * Scan once, then watch the survivors' pidfds; scan again when
             * they are all gone, in case one forked before the SIGKILL. */
            if (p->n_members == 0) {
                int live = for_each_member(p->pid, watch_member, p);
                if (live <= 0)
                    break;
                if (p->kill_sent && now - p->kill_at_ns > 2000000000LL) {
                    p->group_alive = live; /* unkillable (D state): report it */
                    close_members(p);
                    break;
                }
            } else if (p->kill_sent && now - p->kill_at_ns > 2000000000LL) {
                p->group_alive = p->n_members;
                close_members(p);
                break;
            }
        }
        struct pollfd pfd[2 + 64];
        int n = 0, exit_i = -1, out_i = -1, members_i = -1;
        if (p->out_fd >= 0) {
            out_i = n;
            pfd[n++] = (struct pollfd){.fd = p->out_fd, .events = POLLIN};
        }
        if (!p->exited) {
            exit_i = n;
            pfd[n++] = (struct pollfd){.fd = p->pidfd >= 0 ? p->pidfd : p->exit_fd, .events = POLLIN};
        } else {
            members_i = n;
            for (int i = 0; i < p->n_members; i++)
                pfd[n++] = (struct pollfd){.fd = p->member_fds[i], .events = POLLIN};
        }
        int64_t wake;
        if (!p->term_sent)
            wake = p->deadline_ns;
        else if (!p->kill_sent)
            wake = p->kill_at_ns;
        else if (p->exited && p->n_members == 0)
            wake = now + 1000000LL; /* no pidfds for the survivors: poll the group */
        else
            wake = p->kill_at_ns + 2000000000LL;
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
            reap(p);
        }
        if (members_i >= 0) {
            int kept = 0;
            for (int i = 0; i < p->n_members; i++) {
                if (pfd[members_i + i].revents)
                    close(p->member_fds[i]);
                else
                    p->member_fds[kept++] = p->member_fds[i];
            }
            p->n_members = kept;
        }
    }
    p->done_ns = now_ns();
    return 0;
}

void vmsnap_proc_close(struct vmsnap_proc *p) {
    close_members(p);
    if (p->out_fd >= 0)
        close(p->out_fd);
    if (p->pidfd >= 0)
        close(p->pidfd);
    if (p->exit_fd >= 0)
        close(p->exit_fd);
    p->out_fd = p->pidfd = p->exit_fd = -1;
}
