/* freeze.c: the FIFREEZE/FITHAW primitives and the core's identity. */
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

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot. */
static int read_starttime(int pid, uint64_t *ret) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n <= 0)
        return -EIO;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the comm field may hold spaces */
    if (!p)
        return -EIO;
    p++;
    /* after ')' come fields 3..: state is field 3, start time field 22 */
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p, " ", &save); tok; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 3 && tok[0] == 'Z')
            return -ESRCH; /* a zombie has finished */
        if (field == 22) {
            *ret = strtoull(tok, NULL, 10);
            return 0;
        }
    }
    return -EIO;
}

int vmsnap_process_start_time(int pid, uint64_t *ret);
int vmsnap_process_start_time(int pid, uint64_t *ret) { return read_starttime(pid, ret); }

int vmsnap_process_matches(int pid, uint64_t starttime) {
    uint64_t st;
    if (pid <= 0)
        return 0;
    if (read_starttime(pid, &st) < 0)
        return 0;
    return st == starttime;
}
