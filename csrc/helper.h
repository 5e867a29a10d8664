/* helper.h: what the core's helper processes (the guardian, the reaper)
 * share: how they are forked and how they shed the parent's fds. */
#ifndef VMSNAP_HELPER_H
#define VMSNAP_HELPER_H

#include <errno.h>
#include <stdint.h>
#include <sys/types.h>

/* What every program the core starts (scripts, the snapshot step, the
 * resume command) gets: umask 022 (SPEC §3). */
#define CHILD_UMASK 022

/* A program that could not be started exits as a shell reports it: 127 when
 * it is not there (ENOENT, ENOTDIR), 126 when it is there but cannot be run.
 * The one errno -> exit status mapping of the core. */
#define EXIT_NOT_FOUND 127
#define EXIT_NOT_EXECUTABLE 126

static inline int exec_failure_status(int err) {
    return err == ENOENT || err == ENOTDIR ? EXIT_NOT_FOUND : EXIT_NOT_EXECUTABLE;
}

/* fork() with every signal blocked across it: the child must never run a
 * handler of the parent's (Python's); it starts with all signals blocked and
 * sets up its own.  The parent's mask is restored, errno kept.  The child
 * is noted (helper_note_child). */
pid_t helper_fork(void);

/* Our own children that no script's tree may claim when, as a child
 * subreaper, we look for a script's adopted orphans: the guardian, the
 * reaper, the drainers, other supervised children.  Bounded (a ring): an
 * old entry may be dropped, never a wrong one matched (pid + start time). */
void helper_note_child(pid_t pid, uint64_t starttime);
void helper_forget_child(pid_t pid);
int helper_is_noted_child(pid_t pid, uint64_t starttime);

/* In a child between fork and exec: every signal back to its default
 * action (the mask is left as it is). */
void helper_default_signals(void);

#define HELPER_MAX_FDS 256

/* In a helper: moves the N fds pointed to by FDS out of 0..2 (updating
 * them; at most HELPER_MAX_FDS), points 0..2 at /dev/null, closes every other fd, leaves the
 * current directory, names the process NAME, makes it not dumpable. */
void helper_detach(const char *name, int **fds, int n);

#endif
