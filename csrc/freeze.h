/* freeze.h: what the guardian (guardian.c), the controller's session
 * (session.c) and the recorded-thaw path share about the freeze state
 * (freeze.c; not part of the cffi API). */
#ifndef VMSNAP_FREEZE_H
#define VMSNAP_FREEZE_H

#include <stddef.h>
#include <stdint.h>

#include "vmsnap.h"

static inline int fs_get_state(const struct vmsnap_fs *f) {
    return __atomic_load_n(&f->state, __ATOMIC_ACQUIRE);
}

static inline void fs_set_state(struct vmsnap_fs *f, int state) {
    __atomic_store_n(&f->state, state, __ATOMIC_RELEASE);
}

static inline int64_t add_saturated(int64_t t, int64_t d) {
    return d > INT64_MAX - t ? INT64_MAX : t + d;
}

/* Bytes of the shared block that describe its filesystems: what the record holds. */
static inline size_t record_size(const struct vmsnap_shared *sh) {
    return offsetof(struct vmsnap_shared, fs) + (size_t)sh->n * sizeof(struct vmsnap_fs);
}

/* Writes the record (RECORD_FD < 0: none); -errno if it could not. */
int record_write(int record_fd, const struct vmsnap_shared *sh);

/* The crash record during the freeze waves (live records only, see
 * sh->record_live; nothing is written to one that may block).
 *
 * record_mark_freezing(): right before entry I's own FIFREEZE (not when its
 * wave starts: the just-in-time order holds quiet entries back until the
 * busy ones are frozen), it is recorded as "freezing" (may be ours: a thaw
 * from the record undoes it if it is frozen), in one 4-byte pwrite.
 * record_result(): after entry I's FIFREEZE returned (or it was skipped),
 * its outcome: frozen (ours), busy (someone else's: never thawed from the
 * record), failed, skipped.
 *
 * The window that remains is entry I's FIFREEZE call itself: from the mark
 * to the recorded result it reads "freezing" whatever happens to it.  If the
 * guardian dies there and the filesystem is frozen by someone else (a freeze
 * that was there before and that our FIFREEZE met with EBUSY, or one landing
 * in that instant), recovery cannot tell that freeze from ours and thaws it.
 * A freeze by someone else that the record shows as busy, or that lands when
 * the guardian is alive, is never thawed from the record. */
void record_mark_freezing(int record_fd, const struct vmsnap_shared *sh, int i);
void record_result(int record_fd, const struct vmsnap_shared *sh, int i);
/* Writes entry I's STATE alone into the record; -errno if it could not. */
int record_write_state(int record_fd, int i, int state);

int max_level(const struct vmsnap_shared *sh);

/* Thaws one entry through FD, this process's own fd on it, and records the
 * outcome in its state (THAWED, NOT_FROZEN or THAW_FAILED). */
int fs_thaw_entry(struct vmsnap_fs *f, int fd);

/* The thaw order, written once: parents before children, that is the
 * highest level first (the freeze went level 0 first).  Calls
 * THAW_LEVEL(CTX, level) for each level down to 0. */
void thaw_levels(const struct vmsnap_shared *sh, void (*thaw_level)(void *ctx, int level), void *ctx);

/* rcu_expedited for the freeze waves: switches it on and records in SH the
 * value to put back (rcu_restore), so that whoever thaws can restore it if
 * the guardian dies mid-wave; rcu_expedite_end() puts it back. */
void rcu_expedite_begin(struct vmsnap_shared *sh);
void rcu_expedite_end(struct vmsnap_shared *sh);

/* The dirty cap for the presync (dirtycap.c): saves each device's
 * strict_limit and max_ratio_fine in SH (and the record, RECORD_FD),
 * then caps it at sh->dirty_cap_mb; the ends put back what was saved
 * (idempotent: each saved value is restored once). */
void dirty_cap_begin(struct vmsnap_shared *sh, int record_fd);
void dirty_cap_end_one(struct vmsnap_fs *f);
void dirty_cap_end(struct vmsnap_shared *sh);

#endif
