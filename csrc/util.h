/* util.h: small helpers shared by the core's C files (not part of the cffi API). */
#ifndef VMSNAP_UTIL_H
#define VMSNAP_UTIL_H

#include <errno.h>
#include <poll.h>
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

/* ppoll() until the absolute monotonic DEADLINE (0: forever), with
 * nanosecond precision: poll()'s milliseconds would add up to 1 ms to every
 * timeout.  Returns what ppoll returns. */
static inline int poll_until(struct pollfd *fds, nfds_t n, int64_t deadline) {
    if (deadline <= 0)
        return ppoll(fds, n, NULL, NULL);
    int64_t left = deadline - now_ns();
    if (left < 0)
        left = 0;
    struct timespec ts = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
    return ppoll(fds, n, &ts, NULL);
}

static inline int64_t min_deadline(int64_t a, int64_t b) {
    if (a <= 0)
        return b;
    if (b <= 0)
        return a;
    return a < b ? a : b;
}

#endif
