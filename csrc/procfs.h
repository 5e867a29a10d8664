/* procfs.h: reading /proc/PID/stat (not part of the cffi API). */
#ifndef VMSNAP_PROCFS_H
#define VMSNAP_PROCFS_H

#include <stddef.h>
#include <stdint.h>

/* Reads /proc/PID/stat into BUF and returns the text after the command
 * name (which may hold spaces and parentheses): " STATE PPID PGRP ...".
 * NULL if the process is gone or the file is unreadable. */
char *procfs_stat(int pid, char *buf, size_t size);

struct procfs_info {
    char state;         /* R, S, D, Z, ... */
    int ppid;
    int pgrp;
    uint64_t starttime; /* field 22: clock ticks since boot */
};

/* The fields above of process PID, zombies included; -ESRCH if gone. */
int procfs_read(int pid, struct procfs_info *ret);

/* Field 22 of /proc/PID/stat, the start time in clock ticks since boot;
 * -ESRCH for a process that is gone or a zombie. */
int procfs_start_time(int pid, uint64_t *ret);

#endif
