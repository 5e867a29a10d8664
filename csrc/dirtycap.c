/* dirtycap.c: a short cap on each frozen device's dirty data, for the
 * presync only (issue 13).
 *
 * A streaming writer re-dirties its file faster than the presync flushes
 * it, so the freeze after the presync flushes (and blocks writers for) as
 * much as before.  With the device's strict_limit on and max_bytes at the
 * cap, the kernel throttles the writer (balance_dirty_pages) while the
 * presync runs, and the freeze finds at most about the cap to flush.  The
 * old values are saved in the shared block (and so the record) before any
 * is changed; each worker puts its device back as soon as its FIFREEZE
 * returns (frozen, writers wait anyway), the guardian at the thaw, and
 * vmsnap_thaw_state() whoever thaws after the guardian died.
 *
 * The gentle presync (gentle.py) uses the same three steps from Python
 * while the pre-script runs: save (into its own record), set in steps,
 * restore; it hands its saved values to the session, whose save keeps them.
 *
 * Not for a cap of a few MiB: the kernel rounds max_bytes to a ratio of the
 * dirty limit, and at 0 every writer of the device sleeps in 200 ms steps.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "freeze.h"
#include "util.h"

/* The bdi directory of DEV: its own, or its disk's for a partition. */
static int bdi_dir(uint64_t dev, char *buf, size_t len) {
    struct stat st;
    snprintf(buf, len, "/sys/class/bdi/%u:%u", major(dev), minor(dev));
    if (stat(buf, &st) == 0)
        return 0;
    char path[96], num[32] = "";
    snprintf(path, sizeof path, "/sys/dev/block/%u:%u/../dev", major(dev), minor(dev));
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t k = fd >= 0 ? read(fd, num, sizeof num - 1) : -1;
    if (k <= 0)
        return -ENOENT;
    num[k] = 0;
    num[strcspn(num, "\n")] = 0;
    snprintf(buf, len, "/sys/class/bdi/%s", num);
    return stat(buf, &st) == 0 ? 0 : -ENOENT;
}

static int read_int(const char *dir, const char *name, long *v) {
    char path[160], buf[32] = "";
    snprintf(path, sizeof path, "%s/%s", dir, name);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    ssize_t k = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (k <= 0)
        return -ENOENT;
    *v = strtol(buf, NULL, 10);
    return 0;
}

static int write_int(const char *dir, const char *name, long long v) {
    char path[160], buf[32];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    _cleanup_close_ int fd = open(path, O_WRONLY | O_CLOEXEC);
    int n = snprintf(buf, sizeof buf, "%lld", v);
    return fd >= 0 && write(fd, buf, (size_t)n) == n ? 0 : -errno;
}

int vmsnap_dirty_cap_save(struct vmsnap_shared *sh) {
    char dir[96];
    int saved = 0;
    /* every old value saved (and recorded) before any is changed: two
     * filesystems on one disk share its bdi, and must both save the original */
    for (int i = 0; i < sh->n; i++) {
        struct vmsnap_fs *f = &sh->fs[i];
        long strict, fine;
        if (__atomic_load_n(&f->bdi_saved, __ATOMIC_ACQUIRE)) {
            saved++; /* saved before the session: by the gentle presync (gentle.py) */
            continue;
        }
        if (bdi_dir(f->dev, dir, sizeof dir) < 0 || read_int(dir, "strict_limit", &strict) < 0 ||
            read_int(dir, "max_ratio_fine", &fine) < 0)
            continue; /* no such device (btrfs, nfs) or an older kernel: no cap */
        f->bdi_max_ratio_fine = (int32_t)fine;
        __atomic_store_n(&f->bdi_saved, 1 + (strict != 0), __ATOMIC_RELEASE);
        saved++;
    }
    return saved;
}

void vmsnap_dirty_cap_set(const struct vmsnap_shared *sh, int64_t bytes) {
    char dir[96];
    for (int i = 0; i < sh->n; i++) {
        if (!__atomic_load_n(&sh->fs[i].bdi_saved, __ATOMIC_ACQUIRE) ||
            bdi_dir(sh->fs[i].dev, dir, sizeof dir) < 0)
            continue;
        write_int(dir, "max_bytes", (long long)bytes);
        write_int(dir, "strict_limit", 1);
    }
}

void dirty_cap_begin(struct vmsnap_shared *sh, int record_fd) {
    if (sh->dirty_cap_mb <= 0)
        return;
    vmsnap_dirty_cap_save(sh);
    record_write(record_fd, sh); /* nothing frozen yet: safe anywhere */
    vmsnap_dirty_cap_set(sh, (int64_t)sh->dirty_cap_mb << 20);
}

void dirty_cap_end_one(struct vmsnap_fs *f) {
    int saved = __atomic_exchange_n(&f->bdi_saved, 0, __ATOMIC_ACQ_REL);
    char dir[96];
    if (!saved || bdi_dir(f->dev, dir, sizeof dir) < 0)
        return;
    write_int(dir, "strict_limit", saved - 1);
    write_int(dir, "max_ratio_fine", f->bdi_max_ratio_fine);
}

void dirty_cap_end(struct vmsnap_shared *sh) {
    for (int i = 0; i < sh->n; i++)
        dirty_cap_end_one(&sh->fs[i]);
}

void vmsnap_dirty_cap_restore(struct vmsnap_shared *sh) {
    dirty_cap_end(sh);
}
