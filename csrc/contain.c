/* contain.c: holding a supervised child's whole tree.
 *
 * A process group is not a tree: a child that calls setsid() or double-
 * forks leaves it.  Where a cgroup v2 can be made, each child gets one of
 * its own (<cgroup2 mount>/vmsnap/<our pid>-<n>), which it enters before its
 * exec, so nothing it starts can leave; a timeout ends in cgroup.kill
 * (5.14+; before that: freeze the cgroup, SIGKILL each member, thaw).
 * Otherwise this process becomes a child subreaper: orphans of the script
 * come back to us, and the tree is the script, its descendants by parent,
 * the members of its process group, and the orphans adopted since it
 * started (not our own helpers, which are noted).  Signals to a tracked
 * process go through a pidfd after checking its start time, so a reused
 * pid is never hit.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "compat.h"
#include "contain.h"
#include "helper.h"
#include "procfs.h"
#include "util.h"

static char cg_base[VMSNAP_CGROUP_PATH_MAX];
static int cg_found; /* 0: not looked yet, 1: found, -1: none */
static unsigned cg_counter;

/* The cgroup2 mount point: /sys/fs/cgroup on pure-v2 hosts, else the one
 * mountinfo lists (/sys/fs/cgroup/unified on hybrid ones). */
static int find_cgroup2(char *buf, size_t size) {
    FILE *f = fopen("/proc/self/mountinfo", "re");
    if (!f)
        return -errno;
    char line[4096], mnt[VMSNAP_CGROUP_PATH_MAX];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        char *sep = strstr(line, " - ");
        if (!sep || strncmp(sep + 3, "cgroup2 ", 8) != 0)
            continue;
        /* id parent major:minor root mountpoint ...; escaped names skipped */
        if (sscanf(line, "%*s %*s %*s %*s %255s", mnt) != 1 || strchr(mnt, '\\'))
            continue;
        if (!found || strcmp(mnt, "/sys/fs/cgroup") == 0)
            snprintf(buf, size, "%s", mnt);
        found = 1;
    }
    fclose(f);
    return found ? 0 : -ENOENT;
}

static const char *cgroup_base(void) {
    if (cg_found == 0) {
        char mnt[VMSNAP_CGROUP_PATH_MAX];
        int ok = find_cgroup2(mnt, sizeof mnt) == 0 && strlen(mnt) < sizeof cg_base - 40;
        if (ok) {
            snprintf(cg_base, sizeof cg_base, "%s/vmsnap", mnt);
            ok = mkdir(cg_base, 0755) == 0 || errno == EEXIST;
        }
        cg_found = ok ? 1 : -1;
    }
    return cg_found > 0 ? cg_base : NULL;
}

static void fall_back(struct vmsnap_proc *p) {
    /* set at each use: one syscall, and an embedder may have unset it */
    int subreaper = prctl(PR_SET_CHILD_SUBREAPER, 1) == 0;
    p->containment = subreaper ? VMSNAP_CONTAIN_SUBREAPER : VMSNAP_CONTAIN_PGROUP;
}

void contain_setup(struct vmsnap_proc *p, int *procs_fd, int allow_cgroup) {
    *procs_fd = -1;
    p->cgroup_fd = -1;
    p->cgroup[0] = 0;
    const char *base = allow_cgroup && compat_cgroup_allowed() ? cgroup_base() : NULL;
    if (base) {
        unsigned n = __atomic_add_fetch(&cg_counter, 1, __ATOMIC_RELAXED);
        char path[VMSNAP_CGROUP_PATH_MAX];
        int len = snprintf(path, sizeof path, "%s/%d-%u", base, (int)getpid(), n);
        if (len > 0 && (size_t)len < sizeof path && mkdir(path, 0755) == 0) {
            _cleanup_close_ int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            int pfd = dfd >= 0 ? openat(dfd, "cgroup.procs", O_WRONLY | O_CLOEXEC) : -1;
            if (pfd >= 0) {
                memcpy(p->cgroup, path, (size_t)len + 1);
                p->cgroup_fd = TAKE_FD(dfd);
                p->containment = VMSNAP_CONTAIN_CGROUP;
                *procs_fd = pfd;
                return;
            }
            rmdir(path);
        }
    }
    fall_back(p);
}

void contain_cgroup_failed(struct vmsnap_proc *p) {
    if (p->cgroup_fd >= 0)
        close(p->cgroup_fd);
    p->cgroup_fd = -1;
    if (p->cgroup[0])
        rmdir(p->cgroup);
    p->cgroup[0] = 0;
    p->containment = VMSNAP_CONTAIN_PGROUP;
}

int contain_cgroup_procs(int dfd, int sig) {
    int fd = openat(dfd, "cgroup.procs", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char buf[4096];
    int count = 0;
    long cur = -1;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) != 0) {
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        for (ssize_t i = 0; i <= n; i++) {
            if (i < n && buf[i] >= '0' && buf[i] <= '9') {
                cur = (cur < 0 ? 0 : cur) * 10 + (buf[i] - '0');
            } else if (i < n || cur > 0) {
                if (cur > 0) {
                    count++;
                    if (sig)
                        kill((pid_t)cur, sig);
                }
                cur = -1;
            }
        }
    }
    close(fd);
    return count;
}

static int write_file(int dfd, const char *name, const char *text) {
    _cleanup_close_ int fd = openat(dfd, name, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    return write(fd, text, strlen(text)) < 0 ? -errno : 0;
}

static int cgroup_frozen(int dfd) {
    char buf[256];
    _cleanup_close_ int fd = openat(dfd, "cgroup.events", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (n <= 0)
        return 0;
    buf[n] = 0;
    return strstr(buf, "frozen 1") != NULL;
}

int contain_cgroup_kill(int dfd) {
    if (compat_cgroup_kill_allowed() && write_file(dfd, "cgroup.kill", "1") == 0)
        return 0;
    /* before 5.14: frozen, nobody forks or exits meanwhile (a fatal signal
     * still gets through the v2 freezer); then SIGKILL each; thaw */
    int frozen = write_file(dfd, "cgroup.freeze", "1") == 0;
    for (int64_t until = now_ns() + 500000000LL; frozen && !cgroup_frozen(dfd) && now_ns() < until;)
        usleep(1000);
    int n = contain_cgroup_procs(dfd, SIGKILL);
    if (frozen)
        write_file(dfd, "cgroup.freeze", "0");
    return n < 0 ? n : 0;
}

int contain_kill_identity(int pid, uint64_t starttime, int sig) {
    uint64_t st;
    _cleanup_close_ int fd = compat_pidfd_open(pid);
    if (procfs_start_time(pid, &st) < 0 || st != starttime)
        return -ESRCH;
    /* with a pidfd opened before the check, the signal reaches the process
     * checked, or none; without one, a window of microseconds is left */
    int r = fd >= 0 ? compat_pidfd_send_signal(fd, sig) : kill(pid, sig);
    return r < 0 ? -errno : 0;
}

/* --- the tree without a cgroup ------------------------------------------ */

struct pnode {
    int32_t pid, ppid, pgrp;
    char state, member;
    uint64_t start;
};

static int scan_all(struct pnode **ret) {
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    size_t cap = 1024, n = 0;
    struct pnode *v = malloc(cap * sizeof *v);
    struct dirent *e;
    while (v && (e = readdir(d))) {
        struct procfs_info info;
        if (e->d_name[0] < '1' || e->d_name[0] > '9' || procfs_read(atoi(e->d_name), &info) < 0)
            continue;
        if (n == cap) {
            struct pnode *bigger = realloc(v, 2 * cap * sizeof *v);
            if (!bigger)
                break;
            v = bigger;
            cap *= 2;
        }
        v[n++] = (struct pnode){.pid = atoi(e->d_name), .ppid = info.ppid, .pgrp = info.pgrp,
                                .state = info.state, .start = info.starttime};
    }
    closedir(d);
    *ret = v;
    return v ? (int)n : -ENOMEM;
}

static int is_tracked(const struct vmsnap_proc *p, int pid, uint64_t start) {
    for (int i = 0; i < p->n_tracked; i++)
        if (p->tracked_pid[i] == pid && p->tracked_start[i] == start)
            return 1;
    return 0;
}

static void track(struct vmsnap_proc *p, int pid, uint64_t start) {
    if (!is_tracked(p, pid, start) && p->n_tracked < VMSNAP_PROC_TRACKED) {
        p->tracked_pid[p->n_tracked] = pid;
        p->tracked_start[p->n_tracked++] = start;
    }
}

/* Marks P's tree in V: the roots (the child, its group while the child is
 * unreaped, what was tracked, orphans adopted since the child started),
 * then every descendant of a member, by parent pid. */
static void mark_tree(const struct vmsnap_proc *p, struct pnode *v, int n) {
    pid_t self = getpid();
    size_t size = 16;
    while (size < 2 * (size_t)n)
        size *= 2;
    int *slot = malloc(size * sizeof *slot);
    for (int i = 0; i < n; i++) {
        struct pnode *e = &v[i];
        e->member = (e->pid == p->pid && e->start == p->starttime) ||
                    (!p->reaped && e->pgrp == p->pid) || is_tracked(p, e->pid, e->start) ||
                    (p->containment == VMSNAP_CONTAIN_SUBREAPER && e->ppid == self &&
                     e->start >= p->starttime && !helper_is_noted_child(e->pid, e->start));
    }
    if (!slot)
        return;
    memset(slot, -1, size * sizeof *slot);
    for (int i = 0; i < n; i++) {
        size_t h = (size_t)v[i].pid & (size - 1);
        while (slot[h] >= 0)
            h = (h + 1) & (size - 1);
        slot[h] = i;
    }
    for (int changed = 1; changed;) {
        changed = 0;
        for (int i = 0; i < n; i++) {
            if (v[i].member)
                continue;
            for (size_t h = (size_t)v[i].ppid & (size - 1); slot[h] >= 0; h = (h + 1) & (size - 1)) {
                struct pnode *parent = &v[slot[h]];
                if (parent->pid == v[i].ppid) {
                    if (parent->member && parent->start <= v[i].start)
                        v[i].member = changed = 1;
                    break;
                }
            }
        }
    }
    free(slot);
}

int contain_signal(struct vmsnap_proc *p, int sig) {
    if (p->containment == VMSNAP_CONTAIN_CGROUP)
        return contain_cgroup_procs(p->cgroup_fd, sig);
    if (sig && !p->reaped && p->pid > 0)
        kill(-p->pid, sig); /* the unreaped child holds its group id: not reused */
    struct pnode *v = NULL;
    int n = scan_all(&v);
    if (n < 0)
        return n;
    mark_tree(p, v, n);
    pid_t self = getpid();
    int live = 0;
    for (int i = 0; i < n; i++) {
        struct pnode *e = &v[i];
        if (!e->member)
            continue;
        if (e->state == 'Z' || e->state == 'X') {
            if (e->ppid == self && e->pid != p->pid)
                waitpid(e->pid, NULL, WNOHANG); /* an orphan of the tree we adopted */
            continue;
        }
        live++;
        track(p, e->pid, e->start);
        if (sig)
            contain_kill_identity(e->pid, e->start, sig);
    }
    free(v);
    return live;
}

void contain_kill(struct vmsnap_proc *p) {
    if (p->containment == VMSNAP_CONTAIN_CGROUP)
        contain_cgroup_kill(p->cgroup_fd);
    else
        contain_signal(p, SIGKILL);
}

int contain_members(struct vmsnap_proc *p, int32_t *pids, uint64_t *starts, int max) {
    if (p->containment == VMSNAP_CONTAIN_CGROUP)
        return 0;
    /* nothing alive at the exit's scan: nothing can have appeared since */
    if (p->n_tracked && p->reaped)
        contain_signal(p, 0); /* refreshes what is tracked */
    int n = 0;
    for (int i = 0; i < p->n_tracked && n < max; i++) {
        uint64_t st;
        if (procfs_start_time(p->tracked_pid[i], &st) == 0 && st == p->tracked_start[i]) {
            pids[n] = p->tracked_pid[i];
            starts[n++] = st;
        }
    }
    return n;
}

/* --- the drainer ---------------------------------------------------------- */

__attribute__((noreturn)) static void drainer_main(int fd, int cgroup_fd) {
    if (cgroup_fd >= 0)
        write_file(cgroup_fd, "cgroup.procs", "0"); /* dies with the tree it drains */
    int *keep[] = {&fd};
    helper_detach("vmsnap-drain", keep, 1);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    char buf[16384];
    ssize_t k;
    while ((k = read(fd, buf, sizeof buf)) > 0 || (k < 0 && errno == EINTR))
        ; /* discarded: what matters is that the writers never block or get EPIPE */
    _exit(0);
}

void contain_hand_off_output(struct vmsnap_proc *p) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) < 0)
        return;
    /* double fork: the drainer is nobody's zombie (except ours as subreaper,
     * where it is tracked and reaped at the release) */
    pid_t mid = helper_fork();
    if (mid == 0) {
        close(fds[0]);
        pid_t d = fork();
        if (d == 0)
            drainer_main(p->out_fd, p->cgroup_fd);
        int32_t v = d;
        (void)!write(fds[1], &v, sizeof v);
        _exit(0);
    }
    close(fds[1]);
    int32_t d = 0;
    if (mid > 0) {
        if (read(fds[0], &d, sizeof d) == sizeof d && d > 0) {
            struct procfs_info info;
            p->drainer_pid = d;
            if (procfs_read(d, &info) == 0) {
                helper_note_child(d, info.starttime);
                if (p->containment != VMSNAP_CONTAIN_CGROUP)
                    track(p, d, info.starttime);
            }
        }
        waitpid(mid, NULL, 0);
        helper_forget_child(mid);
    }
    close(fds[0]);
}

/* --- the cffi API ---------------------------------------------------------- */

int vmsnap_proc_kill_tree(struct vmsnap_proc *p) {
    if (p->pid <= 0)
        return -ESRCH;
    contain_kill(p);
    return 0;
}

int vmsnap_proc_tree_count(struct vmsnap_proc *p) {
    return p->pid > 0 ? contain_signal(p, 0) : 0;
}

int vmsnap_proc_release(struct vmsnap_proc *p) {
    if (p->pid <= 0)
        return 0;
    if (p->containment != VMSNAP_CONTAIN_CGROUP) {
        if (p->n_tracked)
            contain_signal(p, 0); /* reaps the tree's orphans that died as ours */
        return 0;
    }
    if (p->cgroup_fd >= 0)
        close(p->cgroup_fd);
    p->cgroup_fd = -1;
    if (p->cgroup[0] && rmdir(p->cgroup) < 0 && errno != ENOENT)
        return -errno; /* still populated: left alone, removed later */
    p->cgroup[0] = 0;
    return 0;
}

int vmsnap_cgroup_sweep(void) {
    return contain_cgroup_sweep(0);
}

int contain_cgroup_sweep(int owner) {
    const char *base = compat_cgroup_allowed() ? cgroup_base() : NULL;
    DIR *d = base ? opendir(base) : NULL;
    if (!d)
        return 0;
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        int pid;
        unsigned n;
        char path[VMSNAP_CGROUP_PATH_MAX];
        if (sscanf(e->d_name, "%d-%u", &pid, &n) != 2 || pid == getpid() || (owner && pid != owner))
            continue;
        if ((owner || (kill(pid, 0) < 0 && errno == ESRCH)) &&
            (size_t)snprintf(path, sizeof path, "%s/%s", base, e->d_name) < sizeof path &&
            rmdir(path) == 0)
            removed++;
    }
    closedir(d);
    return removed;
}
