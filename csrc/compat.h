/* compat.h: raw syscall wrappers for what older glibc lacks, so callers
 * need no #ifdefs.  Each returns what the syscall returns (-1 + errno). */
#ifndef VMSNAP_COMPAT_H
#define VMSNAP_COMPAT_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/resource.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

/* Paths switched off by vmsnap_compat_disable(), so that each fallback
 * (what an old kernel or libc gets) is exercised by the tests here. */
extern int vmsnap_compat_disabled;

/* pidfd_open(2), 5.3+; -1 with ENOSYS where missing (or switched off). */
static inline int compat_pidfd_open(pid_t pid) {
    if (vmsnap_compat_disabled & 1 /* VMSNAP_COMPAT_NO_PIDFD */) {
        errno = ENOSYS;
        return -1;
    }
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* pidfd_send_signal(2), 5.1+. */
static inline int compat_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* syncfs(2); ENOSYS where missing (or switched off): the presync is then
 * skipped, and FIFREEZE does the whole sync itself. */
static inline int compat_syncfs(int fd) {
    if (vmsnap_compat_disabled & 4 /* VMSNAP_COMPAT_NO_SYNCFS */) {
        errno = ENOSYS;
        return -1;
    }
    return syncfs(fd);
}

struct compat_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* close_range(2) when the kernel has it (5.9+), else every fd listed in
 * /proc/self/fd (the fds may be numbered far above any fixed bound), else a
 * loop up to RLIMIT_NOFILE.  Async-signal-safe: it runs in spawned children
 * between fork and exec. */
static inline void compat_close_range(unsigned first, unsigned last) {
    if (first > last)
        return;
    if (!(vmsnap_compat_disabled & 2 /* VMSNAP_COMPAT_NO_CLOSE_RANGE */) &&
        syscall(SYS_close_range, first, last, 0) == 0)
        return;
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        char buf[4096] __attribute__((aligned(8)));
        long n;
        while ((n = syscall(SYS_getdents64, dfd, buf, sizeof buf)) > 0) {
            for (long off = 0; off < n;) {
                struct compat_dirent64 *d = (struct compat_dirent64 *)(buf + off);
                off += d->d_reclen;
                unsigned fd = 0;
                const char *c = d->d_name;
                if (*c < '0' || *c > '9')
                    continue;
                for (; *c >= '0' && *c <= '9'; c++)
                    fd = fd * 10 + (unsigned)(*c - '0');
                if ((int)fd != dfd && fd >= first && fd <= last)
                    close((int)fd);
            }
        }
        close(dfd);
        return;
    }
    struct rlimit rl;
    unsigned max = 65536;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (1u << 20))
        max = (unsigned)rl.rlim_cur;
    if (last >= max)
        last = max - 1;
    for (unsigned fd = first; fd <= last; fd++)
        close((int)fd);
}

/* Whether the cgroup v2 paths (per-run cgroups, cgroup.kill) may be used. */
static inline int compat_cgroup_allowed(void) {
    return !(vmsnap_compat_disabled & 16 /* VMSNAP_COMPAT_NO_CGROUP */);
}
static inline int compat_cgroup_kill_allowed(void) {
    return !(vmsnap_compat_disabled & 32 /* VMSNAP_COMPAT_NO_CGROUP_KILL */);
}

#endif
