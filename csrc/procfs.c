/* procfs.c: reading /proc/PID/stat. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>

#include "procfs.h"
#include "util.h"
#include "vmsnap.h"

char *procfs_stat(int pid, char *buf, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    ssize_t n = read(fd, buf, size - 1);
    if (n <= 0)
        return NULL;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may hold spaces and ')' */
    return p ? p + 1 : NULL;
}

int procfs_start_time(int pid, uint64_t *ret) {
    char buf[1024];
    char *p = procfs_stat(pid, buf, sizeof buf);
    if (!p)
        return -ESRCH;
    /* after the name come fields 3..: the state is field 3, the start time 22 */
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

int vmsnap_process_matches(int pid, uint64_t starttime) {
    uint64_t st;
    return pid > 0 && procfs_start_time(pid, &st) == 0 && st == starttime;
}
