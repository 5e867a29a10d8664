/* helper.h: what the core's helper processes (the guardian, the reaper)
 * share: how they are forked and how they shed the parent's fds. */
#ifndef VMSNAP_HELPER_H
#define VMSNAP_HELPER_H

#include <sys/types.h>

/* fork() with every signal blocked across it: the child must never run a
 * handler of the parent's (Python's); it starts with all signals blocked and
 * sets up its own.  The parent's mask is restored, errno kept. */
pid_t helper_fork(void);

#define HELPER_MAX_FDS 256

/* In a helper: moves the N fds pointed to by FDS out of 0..2 (updating
 * them; at most HELPER_MAX_FDS), points 0..2 at /dev/null, closes every other fd, leaves the
 * current directory, names the process NAME, makes it not dumpable. */
void helper_detach(const char *name, int **fds, int n);

#endif
