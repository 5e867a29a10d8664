/* freeze.c: the FIFREEZE/FITHAW primitives, the one thaw from saved state
 * (parents first), the rcu_expedited switch, the crash record, the core's
 * identity and its compat switches. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "compat.h"
#include "freeze.h"
#include "util.h"
#include "vmsnap.h"

_Static_assert(VMSNAP_MAX_FS == 128, "cdef array sizes are literal");
_Static_assert(VMSNAP_PATH_MAX == 4096, "cdef array sizes are literal");

#ifndef VMSNAP_VERSION
#define VMSNAP_VERSION "unknown"
#endif

int vmsnap_compat_disabled = 0;

int vmsnap_compat_disable(int flags) {
    int old = vmsnap_compat_disabled;
    vmsnap_compat_disabled = flags;
    return old;
}

const char *vmsnap_core_version(void) { return VMSNAP_VERSION; }
int vmsnap_core_abi(void) { return VMSNAP_ABI_VERSION; }
int64_t vmsnap_now_ns(void) { return now_ns(); }

int vmsnap_fifreeze(int fd) {
    return ioctl(fd, FIFREEZE, 0) < 0 ? -errno : 0;
}

int vmsnap_syncfs(int fd) {
    return compat_syncfs(fd) < 0 ? -errno : 0;
}

int vmsnap_fithaw(int fd) {
    return ioctl(fd, FITHAW, 0) < 0 ? -errno : 0;
}

int record_write(int record_fd, const struct vmsnap_shared *sh) {
    if (record_fd < 0)
        return 0;
    size_t size = record_size(sh), off = 0;
    const char *p = (const char *)sh;
    while (off < size) {
        ssize_t w = pwrite(record_fd, p + off, size - off, (off_t)off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? -errno : -EIO;
        off += (size_t)w;
    }
    return 0;
}

int record_write_state(int record_fd, int i, int state) {
    if (record_fd < 0)
        return 0;
    /* one aligned 4-byte field, written in one call: a reader, or a death
     * of the writer, sees the old value or the new one, never a mix */
    off_t off = (off_t)(offsetof(struct vmsnap_shared, fs) + (size_t)i * sizeof(struct vmsnap_fs) +
                        offsetof(struct vmsnap_fs, state));
    int32_t v = state;
    for (;;) {
        ssize_t w = pwrite(record_fd, &v, sizeof v, off);
        if (w == (ssize_t)sizeof v)
            return 0;
        if (w < 0 && errno == EINTR)
            continue;
        return w < 0 ? -errno : -EIO;
    }
}

void record_mark_freezing(int record_fd, const struct vmsnap_shared *sh, int i) {
    if (sh->record_live) /* a record that may block in the window is not rewritten in it */
        (void)record_write_state(record_fd, i, VMSNAP_FS_FREEZING);
}

void record_result(int record_fd, const struct vmsnap_shared *sh, int i) {
    if (sh->record_live)
        (void)record_write_state(record_fd, i, fs_get_state(&sh->fs[i]));
}

int max_level(const struct vmsnap_shared *sh) {
    int max = 0;
    for (int i = 0; i < sh->n; i++)
        if (sh->fs[i].level > max)
            max = sh->fs[i].level;
    return max;
}

void thaw_levels(const struct vmsnap_shared *sh, void (*thaw_level)(void *ctx, int level), void *ctx) {
    for (int level = max_level(sh); level >= 0; level--)
        thaw_level(ctx, level);
}

/* Whether FD is the mount point directory entry F was opened as.  FITHAW
 * acts on the superblock of whatever FD is (a socket's: sockfs), so its
 * EINVAL says something about F only through F's own directory. */
static int fd_is_entry(int fd, const struct vmsnap_fs *f) {
    struct stat st;
    return fd >= 0 && fstat(fd, &st) == 0 && S_ISDIR(st.st_mode) &&
           (uint64_t)st.st_dev == f->dev && (uint64_t)st.st_ino == f->ino;
}

int fs_thaw_entry(struct vmsnap_fs *f, int fd) {
    f->thaw_start_ns = now_ns();
    if (!fd_is_entry(fd, f)) {
        /* not the directory we froze through (or another mount there now):
         * its freeze is not ours to undo */
        f->thaw_errno = ESTALE;
        fs_set_state(f, VMSNAP_FS_THAW_FAILED);
        return -ESTALE;
    }
    fs_set_state(f, VMSNAP_FS_THAWING);
    int r = vmsnap_fithaw(fd);
    f->thaw_end_ns = now_ns();
    if (r == -EINVAL) {
        /* through the verified fd: the superblock is not frozen (by userspace) */
        f->thaw_errno = EINVAL;
        fs_set_state(f, VMSNAP_FS_NOT_FROZEN);
        return 0;
    }
    if (r < 0) {
        f->thaw_errno = -r;
        fs_set_state(f, VMSNAP_FS_THAW_FAILED);
        return r;
    }
    f->thaw_errno = 0;
    fs_set_state(f, VMSNAP_FS_THAWED);
    return 0;
}

/* What a thaw from saved state undoes: whatever this session may have
 * frozen.  A FIFREEZE still in flight when its guardian died lands (it is
 * not interruptible): thawing it is ours too.  In a record, "freezing" is
 * also every entry of a wave marked before the wave's first FIFREEZE
 * (record_mark_freezing()) whose result was not recorded yet: whether our
 * FIFREEZE was issued, landed, or met someone else's freeze (EBUSY) is
 * unknown, and a frozen one is thawed as ours.  Pending, synced, busy,
 * failed, skipped were never frozen by us: left alone. */
static int may_be_ours(int state) {
    return state == VMSNAP_FS_FREEZING || state == VMSNAP_FS_FROZEN ||
           state == VMSNAP_FS_THAWING || state == VMSNAP_FS_THAW_FAILED;
}

struct state_thaw {
    struct vmsnap_shared *sh;
    const int32_t *fds;
    int failures;
};

static void thaw_level_in_turn(void *ctx, int level) {
    struct state_thaw *t = ctx;
    for (int i = 0; i < t->sh->n; i++) {
        struct vmsnap_fs *f = &t->sh->fs[i];
        if (f->level != level || !may_be_ours(fs_get_state(f)))
            continue;
        _cleanup_close_ int own = -1;
        if (!t->fds)
            own = open(f->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
        if (fs_thaw_entry(f, t->fds ? t->fds[i] : own) < 0)
            t->failures++;
    }
}

int vmsnap_thaw_state(struct vmsnap_shared *sh, const int32_t *fds) {
    if (sh->n < 0 || sh->n > VMSNAP_MAX_FS)
        return -EINVAL;
    struct state_thaw t = {.sh = sh, .fds = fds};
    dirty_cap_end(sh); /* first: nothing it does can block on a frozen filesystem */
    thaw_levels(sh, thaw_level_in_turn, &t);
    rcu_expedite_end(sh);
    return t.failures ? -EIO : 0;
}

/* FIFREEZE takes the superblock's percpu rwsems for writing, and each
 * percpu_down_write() waits for an RCU grace period unless a recent writer
 * left the fast path disabled: some 20 ms per filesystem, most of an idle
 * freeze.  Expedited grace periods take microseconds.  We switch them on
 * for the freeze waves only and restore the previous setting at once. */
#define RCU_EXPEDITED "/sys/kernel/rcu_expedited"

void rcu_expedite_begin(struct vmsnap_shared *sh) {
    _cleanup_close_ int fd = open(RCU_EXPEDITED, O_RDWR | O_CLOEXEC);
    char old = 0;
    if (fd < 0 || pread(fd, &old, 1, 0) != 1 || old != '0')
        return; /* absent, or already on: nothing to restore */
    /* recorded first: whoever outlives us puts it back */
    __atomic_store_n(&sh->rcu_restore, 0, __ATOMIC_RELEASE);
    if (pwrite(fd, "1", 1, 0) == 1)
        sh->rcu_expedited = 1;
}

void rcu_expedite_end(struct vmsnap_shared *sh) {
    int prev = __atomic_exchange_n(&sh->rcu_restore, -1, __ATOMIC_ACQ_REL);
    if (prev < 0)
        return;
    _cleanup_close_ int fd = open(RCU_EXPEDITED, O_WRONLY | O_CLOEXEC);
    if (fd >= 0)
        (void)!pwrite(fd, prev ? "1" : "0", 1, 0);
}
