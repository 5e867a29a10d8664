/* reaper.h: what spawn.c tells this process's reaper (not part of the cffi
 * API; the public calls are in vmsnap.h). */
#ifndef VMSNAP_REAPER_H
#define VMSNAP_REAPER_H

#include <stdint.h>

/* Registers CGROUP before a child is cloned into it, under no key yet; the
 * slot (>= 0), or -errno (no reaper: nothing to do).  reaper_prewatch_done
 * gives it the child's pid as key, or (PID <= 0: nothing was started)
 * frees it. */
int reaper_prewatch_cgroup(const char *cgroup);
void reaper_prewatch_done(int slot, int pid);
/* In a child cloned with CLONE_VM, just before its exec: registers it (PID
 * with STARTTIME, and its group PID; PID 0: nothing to register, its
 * cgroup was) and says whether it may run: -ESHUTDOWN once the reaper has
 * begun to kill (the controller is gone), else 0. */
int reaper_child_check(int pid, uint64_t starttime);
/* In such a child: whether a resume job is in progress (its attempts mark
 * themselves), and the mark (PID 0: none), once it is known to run (just
 * before its exec). */
int reaper_child_job(void);
void reaper_child_mark(int pid, uint64_t starttime);

#endif
