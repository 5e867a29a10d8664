/* waves.h: the guardian's state as its freeze waves (schedule.c) see it;
 * the guardian process itself is guardian.c (not part of the cffi API). */
#ifndef VMSNAP_WAVES_H
#define VMSNAP_WAVES_H

#include <pthread.h>

#include "vmsnap.h"

struct guardian {
    struct vmsnap_shared *sh;
    int fds[VMSNAP_MAX_FS]; /* ours: the controller's, dup'ed by the fork */
    int sock;        /* to the controller; -1 once it is gone */
    int ctl_pidfd;   /* the controller's pidfd, or -1 */
    int sigfd;
    int evfd;        /* workers write 1 here after each state change */
    int record_fd;
    int signal_reason; /* the thaw reason of the last watched signal */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int presync;
    int sync_go;
    char go[VMSNAP_MAX_FS]; /* worker i may freeze */
    int thaw_level;    /* frozen workers with level >= this thaw */
    int abort;         /* no new syncs or freezes */
};

enum event {
    EV_PRED,            /* the awaited condition holds */
    EV_TIMEOUT,         /* the caller's bound passed (not the deadline) */
    EV_CMD_FREEZE,
    EV_CMD_PRESYNC_FREEZE,
    EV_CMD_THAW,
    EV_CMD_DETACH,
    EV_DEADLINE,
    EV_CONTROLLER_GONE,
    EV_SIGNAL,
};

typedef int (*predicate)(struct guardian *g, int arg);

#define BIT(state) (1u << (state))

/* Waits until PRED(g, arg) holds, BOUND (0: none) passes, or something else happens. */
enum event wait_event(struct guardian *g, predicate pred, int arg, int64_t bound);
/* How many entries with a level in [LO, HI] are in one of the STATES (a bit set). */
int count(struct guardian *g, int lo, int hi, unsigned states);
/* Freezes level 0, then 1, ... (each all at once or just in time);
 * EV_PRED when done, or the event that cut it short. */
enum event do_freeze_waves(struct guardian *g);

#endif
