/* compat.h: raw syscall wrappers for what older glibc lacks, so callers
 * need no #ifdefs.  Each returns what the syscall returns (-1 + errno). */
#ifndef VMSNAP_COMPAT_H
#define VMSNAP_COMPAT_H

#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
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

/* syncfs(2); ENOSYS where missing (or switched off): the presync is then
 * skipped, and FIFREEZE does the whole sync itself. */
static inline int compat_syncfs(int fd) {
    if (vmsnap_compat_disabled & 4 /* VMSNAP_COMPAT_NO_SYNCFS */) {
        errno = ENOSYS;
        return -1;
    }
    return syncfs(fd);
}

/* close_range(2) when the kernel has it (5.9+), else a loop. */
static inline void compat_close_range(unsigned first, unsigned last) {
    if (first > last)
        return;
    if (!(vmsnap_compat_disabled & 2 /* VMSNAP_COMPAT_NO_CLOSE_RANGE */) &&
        syscall(SYS_close_range, first, last, 0) == 0)
        return;
    long max = sysconf(_SC_OPEN_MAX);
    if (max < 0 || max > 65536)
        max = 65536;
    if (last > (unsigned)max)
        last = (unsigned)max;
    for (unsigned fd = first; fd <= last; fd++)
        close((int)fd);
}

#endif
