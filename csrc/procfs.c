/* procfs.c: reading /proc/PID/stat, and counting a process group's members. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
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

int procfs_read(int pid, struct procfs_info *ret) {
    char buf[1024];
    char *p = procfs_stat(pid, buf, sizeof buf);
    if (!p)
        return -ESRCH;
    /* after the name come fields 3..: state 3, ppid 4, pgrp 5, start time 22 */
    unsigned long long start;
    if (sscanf(p, " %c %d %d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
               &ret->state, &ret->ppid, &ret->pgrp, &start) != 4)
        return -EIO;
    ret->starttime = start;
    return 0;
}

int procfs_start_time(int pid, uint64_t *ret) {
    struct procfs_info info;
    int r = procfs_read(pid, &info);
    if (r < 0)
        return r;
    if (info.state == 'Z' || info.state == 'X')
        return -ESRCH; /* a zombie has finished */
    *ret = info.starttime;
    return 0;
}

int vmsnap_process_matches(int pid, uint64_t starttime) {
    uint64_t st;
    return pid > 0 && procfs_start_time(pid, &st) == 0 && st == starttime;
}

int vmsnap_group_live_count(int pgid) {
    if (kill(-pgid, 0) < 0 && errno == ESRCH)
        return 0;
    DIR *d = opendir("/proc");
    if (!d)
        return -errno;
    int count = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        struct procfs_info info;
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9' && procfs_read(atoi(e->d_name), &info) == 0 &&
            info.pgrp == pgid && info.state != 'Z' && info.state != 'X')
            count++;
    }
    closedir(d);
    return count;
}
