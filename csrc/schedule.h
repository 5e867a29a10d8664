/* schedule.h: the just-in-time order of one freeze level (schedule.c; not
 * part of the cffi API). */
#ifndef VMSNAP_SCHEDULE_H
#define VMSNAP_SCHEDULE_H

#include "vmsnap.h"

/* A presync this short says the filesystem has nothing worth waiting for. */
#define SCHEDULE_SLOW_NS (20 * 1000000LL)
/* Late: a presync at most 1/SCHEDULE_LATE_DIVISOR of the level's slowest. */
#define SCHEDULE_LATE_DIVISOR 4

/* Marks (fs[i].late = 1) the entries of LEVEL whose freeze should start
 * only once the others of the level are frozen; returns how many.  None
 * unless sh->schedule is VMSNAP_SCHEDULE_JIT and the level's slowest
 * presync took SCHEDULE_SLOW_NS or more.  An entry whose presync did not
 * finish or failed counts as slow: it starts first, as in a parallel wave. */
int schedule_mark_late(struct vmsnap_shared *sh, int level);

#endif
