/* contain.h: holding a supervised child's whole tree (not part of the cffi
 * API): a cgroup v2 of its own where one can be made, else this process as
 * a child subreaper tracking the descendants, else its process group. */
#ifndef VMSNAP_CONTAIN_H
#define VMSNAP_CONTAIN_H

#include <stdint.h>

#include "vmsnap.h"

/* Chooses P's containment before the spawn (a cgroup only if ALLOW_CGROUP).
 * For a cgroup, *PROCS_FD is its cgroup.procs, open for the child to move
 * itself in; else -1. */
void contain_setup(struct vmsnap_proc *p, int *procs_fd, int allow_cgroup);
/* Removes the cgroup made for P, if any (it could not be used). */
void contain_cgroup_failed(struct vmsnap_proc *p);
/* Sends SIG (0: none) to every live process of P's tree; returns how many
 * there are (zombies not counted; adopted zombies of ours are reaped). */
int contain_signal(struct vmsnap_proc *p, int sig);
/* SIGKILL to the whole tree: cgroup.kill where there is one. */
void contain_kill(struct vmsnap_proc *p);
/* Hands P's output pipe to a detached drainer (in P's cgroup). */
void contain_hand_off_output(struct vmsnap_proc *p);

/* For the reaper, by the cgroup's directory fd: */
int contain_cgroup_kill(int dfd);
int contain_cgroup_procs(int dfd, int sig);
/* SIG to PID if its start time is STARTTIME (through a pidfd where there is
 * one, so a reused pid is never hit); -ESRCH if it is not that process. */
int contain_kill_identity(int pid, uint64_t starttime, int sig);
/* Removes the empty per-run cgroups of OWNER (a controller that is gone),
 * or with 0 those of every controller that is gone; how many. */
int contain_cgroup_sweep(int owner);
/* Live members (pid, start time) of P's tree, at most MAX; the count. */
int contain_members(struct vmsnap_proc *p, int32_t *pids, uint64_t *starts, int max);

#endif
