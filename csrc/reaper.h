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

#endif
