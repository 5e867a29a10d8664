/* util.h: small helpers shared by the core's C files (not part of the cffi API). */
#ifndef VMSNAP_UTIL_H
#define VMSNAP_UTIL_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))

static inline void closep(int *fd) {
    if (*fd >= 0) {
        int saved = errno;
        close(*fd);
        errno = saved;
    }
}
#define _cleanup_close_ _cleanup_(closep)

/* Hands an fd out of a _cleanup_close_ variable. */
static inline int take_fd(int *fd) {
    int r = *fd;
    *fd = -1;
    return r;
}
#define TAKE_FD(fd) take_fd(&(fd))

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Milliseconds until DEADLINE for poll(), rounded up so we never wake early;
 * -1 (forever) when DEADLINE is 0 or negative. */
static inline int poll_timeout_ms(int64_t deadline) {
    if (deadline <= 0)
        return -1;
    int64_t left = deadline - now_ns();
    if (left <= 0)
        return 0;
    int64_t ms = (left + 999999) / 1000000;
    return ms > 0x7fffffff ? 0x7fffffff : (int)ms;
}

static inline int64_t min_deadline(int64_t a, int64_t b) {
    if (a <= 0)
        return b;
    if (b <= 0)
        return a;
    return a < b ? a : b;
}

#endif
