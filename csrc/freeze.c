/* freeze.c: the FIFREEZE/FITHAW primitives, the core's identity and its compat switches. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include "compat.h"
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

int vmsnap_fithaw(int fd) {
    return ioctl(fd, FITHAW, 0) < 0 ? -errno : 0;
}

int vmsnap_thaw_path(const char *path, uint64_t expect_dev) {
    _cleanup_close_ int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    /* The record names a mount point; if something else is mounted there
     * now, its freeze is not ours to undo. */
    if (expect_dev && (uint64_t)st.st_dev != expect_dev)
        return -ESTALE;
    return vmsnap_fithaw(fd);
}
