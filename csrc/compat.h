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

static inline int compat_pidfd_open(pid_t pid) {
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* close_range(2) when the kernel has it (5.9+), else a loop. */
static inline void compat_close_range(unsigned first, unsigned last) {
    if (first > last)
        return;
    if (syscall(SYS_close_range, first, last, 0) == 0)
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
