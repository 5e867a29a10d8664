/* schedule.c: just-in-time freezing within a level.
 *
 * A filesystem is blocked for writers from its FIFREEZE until its FITHAW,
 * and all thaw together after the snapshot.  Frozen with the rest of its
 * level, one with little to flush is blocked for as long as its slowest
 * neighbour takes to flush.  The presync just before measured what each
 * flush costs (a streaming writer re-dirties as fast as it is flushed), so
 * the slow ones start first and the quick ones only when those are frozen:
 * the snapshot still finds every filesystem frozen, and a quick one is
 * blocked for its own flush plus the snapshot, not its neighbour's. */
#include <pthread.h>

#include "freeze.h"
#include "schedule.h"
#include "waves.h"

static int64_t presync_cost(const struct vmsnap_fs *f) {
    if (!f->sync_end_ns || f->sync_errno || f->sync_end_ns < f->sync_start_ns)
        return -1; /* unknown: no presync, it failed, or it is still running */
    return f->sync_end_ns - f->sync_start_ns;
}

int schedule_mark_late(struct vmsnap_shared *sh, int level) {
    int64_t slowest = 0;
    int unknown = 0;
    for (int i = 0; i < sh->n; i++) {
        if (sh->fs[i].level != level)
            continue;
        sh->fs[i].late = 0;
        int64_t c = presync_cost(&sh->fs[i]);
        unknown += c < 0;
        if (c > slowest)
            slowest = c;
    }
    if (sh->schedule != VMSNAP_SCHEDULE_JIT || (slowest < SCHEDULE_SLOW_NS && !unknown))
        return 0;
    if (slowest < SCHEDULE_SLOW_NS)
        slowest = SCHEDULE_SLOW_NS; /* only unknowns are slow: the quick ones wait for them */
    int late = 0;
    for (int i = 0; i < sh->n; i++) {
        struct vmsnap_fs *f = &sh->fs[i];
        int64_t c = presync_cost(f);
        if (f->level == level && c >= 0 && c * SCHEDULE_LATE_DIVISOR <= slowest) {
            f->late = 1;
            late++;
        }
    }
    return late;
}

#define SETTLED (BIT(VMSNAP_FS_FROZEN) | BIT(VMSNAP_FS_BUSY) | BIT(VMSNAP_FS_FAILED))
static int level_settled(struct guardian *g, int level) {
    return !count(g, level, level, ~SETTLED);
}

/* The entries of LEVEL that start first (not late) have frozen or failed. */
static int early_settled(struct guardian *g, int level) {
    for (int i = 0; i < g->sh->n; i++) {
        struct vmsnap_fs *f = &g->sh->fs[i];
        if (f->level == level && !f->late && !(BIT(fs_get_state(f)) & SETTLED))
            return 0;
    }
    return 1;
}

/* Lets the workers of LEVEL whose late mark is LATE freeze. */
static void release(struct guardian *g, int level, int late) {
    pthread_mutex_lock(&g->mu);
    for (int i = 0; i < g->sh->n; i++)
        if (g->sh->fs[i].level == level && g->sh->fs[i].late == late)
            g->go[i] = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

enum event do_freeze_waves(struct guardian *g) {
    int top = max_level(g->sh);
    for (int level = 0; level <= top; level++) {
        int late = schedule_mark_late(g->sh, level);
        release(g, level, 0);
        enum event ev = late ? wait_event(g, early_settled, level, 0) : EV_PRED;
        if (ev != EV_PRED)
            return ev;
        if (late) /* even after a failure: each of a level is tried, as in a parallel wave */
            release(g, level, 1);
        ev = wait_event(g, level_settled, level, 0);
        if (ev != EV_PRED)
            return ev;
        if (count(g, level, level, BIT(VMSNAP_FS_FAILED)))
            break; /* the controller thaws; deeper waves would only add to undo */
    }
    return EV_PRED;
}
