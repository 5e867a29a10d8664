/* vmsnap.h: the public interface of the vmsnap native core.
 *
 * This header is the only source of the cffi declarations: csrc/build_ffi.py
 * feeds everything between the cdef markers to ffibuilder.cdef(), so the
 * prototypes the Python side sees are the ones the C compiler checks.
 * Keep the part between the markers free of preprocessor logic: cffi reads
 * integer #defines, structs and prototypes, nothing else.
 *
 * Conventions: functions return 0 (or a count) on success and -errno on
 * failure; times are CLOCK_MONOTONIC nanoseconds; deadlines are absolute.
 */
#ifndef VMSNAP_H
#define VMSNAP_H

#include <stdint.h>

/* cffi-cdef-begin */

/* Bumped whenever a struct or prototype below changes; the Python side
 * refuses a core whose ABI differs from the one it was written for. */
#define VMSNAP_ABI_VERSION 13

#define VMSNAP_MAX_FS 128
#define VMSNAP_PATH_MAX 4096

/* Per-filesystem state in a freeze session.  The guardian process writes
 * these; the controller and the crash record read them. */
enum vmsnap_fs_state {
    VMSNAP_FS_PENDING = 0,      /* nothing done yet */
    VMSNAP_FS_SYNCING = 1,      /* presync (syncfs) in progress */
    VMSNAP_FS_SYNCED = 2,       /* presync done, waiting for its freeze wave */
    VMSNAP_FS_FREEZING = 3,     /* FIFREEZE issued, not returned */
    VMSNAP_FS_FROZEN = 4,       /* frozen by this session */
    VMSNAP_FS_THAWING = 5,      /* FITHAW issued, not returned */
    VMSNAP_FS_THAWED = 6,       /* frozen and thawed again by this session */
    VMSNAP_FS_BUSY = 7,         /* already frozen by someone else: left alone */
    VMSNAP_FS_FAILED = 8,       /* FIFREEZE failed (freeze_errno) */
    VMSNAP_FS_SKIPPED = 9,      /* never attempted (an earlier wave failed, or abort) */
    VMSNAP_FS_THAW_FAILED = 10, /* FITHAW failed (thaw_errno): may still be frozen */
    VMSNAP_FS_NOT_FROZEN = 11   /* FITHAW through a verified fd said EINVAL: not frozen
                                 * when the thaw came (thawed by someone else, or the
                                 * freeze never landed) */
};

struct vmsnap_fs {
    int32_t level;           /* freeze wave: level 0 first, thaw in reverse */
    int32_t state;           /* enum vmsnap_fs_state */
    int32_t sync_errno;
    int32_t freeze_errno;
    int32_t thaw_errno;
    int32_t late;            /* just-in-time: its freeze started after the slow ones
                              * of its level had frozen (it had little to flush) */
    int32_t bdi_saved;       /* the dirty cap: 0 nothing to restore, else 1 + the
                              * strict_limit its device had (dirtycap.c) */
    int32_t bdi_max_ratio_fine; /* ... and its max_ratio_fine */
    uint64_t dev;            /* st_dev and st_ino of the mount point: a thaw checks */
    uint64_t ino;            /*   its fd (or the path it opens) against them first */
    int64_t sync_start_ns;
    int64_t sync_end_ns;
    int64_t freeze_start_ns;
    int64_t freeze_end_ns;
    int64_t thaw_start_ns;
    int64_t thaw_end_ns;
    char path[4096];
};

/* How the freezes of one level start (the levels still go in order,
 * children first, and every FIFREEZE has returned before the freeze
 * command answers: everything is frozen when the snapshot starts). */
enum vmsnap_schedule {
    VMSNAP_SCHEDULE_PARALLEL = 0, /* all of a level at once */
    VMSNAP_SCHEDULE_JIT = 1       /* just in time: those with much to flush (by
                                   * their presync) first, the others once those
                                   * are frozen, so they are not blocked meanwhile */
};

/* Why the guardian thawed (or began to). */
enum vmsnap_thaw_reason {
    VMSNAP_THAW_NONE = 0,
    VMSNAP_THAW_REQUESTED = 1,       /* the controller asked */
    VMSNAP_THAW_DEADLINE = 2,        /* the freeze deadline passed */
    VMSNAP_THAW_CONTROLLER_DIED = 3,
    VMSNAP_THAW_SIGNAL = 4,          /* SIGUSR1/SIGTERM/SIGINT/SIGHUP/SIGQUIT to the guardian */
    VMSNAP_THAW_EMERGENCY = 5,       /* the guardian died; the controller thaws */
    VMSNAP_THAW_COMMAND = 6          /* `vmsnap thaw` from another shell (SIGUSR2) */
};

/* Shared between the controller and the guardian (MAP_SHARED), and written
 * as the crash record under /run/vmsnap/.  No fd numbers: each process
 * thaws through its own fds. */
#define VMSNAP_RECORD_MAGIC 0x564d534e
struct vmsnap_shared {
    uint32_t magic;
    uint32_t abi;
    int32_t n;
    int32_t controller_pid;
    int32_t guardian_pid;
    int32_t deadline_hit;    /* the guardian thawed because the deadline passed */
    int32_t guardian_done;   /* the guardian finished its work and is exiting */
    int32_t detached;        /* the controller left; the guardian holds the freeze */
    int32_t thaw_reason;     /* enum vmsnap_thaw_reason */
    int32_t record_live;     /* the guardian may rewrite the record during the window */
    int32_t expedite_rcu;    /* asked: expedite RCU grace periods during the freeze */
    int32_t rcu_expedited;   /* done: we set /sys/kernel/rcu_expedited for the freeze waves */
    int32_t rcu_restore;     /* the rcu_expedited value still to put back; -1: nothing */
    int32_t presync_timed_out; /* the presync bound passed: the freeze went on */
    int32_t schedule;        /* enum vmsnap_schedule: how each level's freezes start */
    int32_t dirty_cap_mb;    /* asked: cap each device's dirty data at this during the
                              * presync (strict_limit + max_bytes), 0: no cap */
    int64_t timeout_ns;      /* the freeze cap, counted from the first FIFREEZE */
    int64_t presync_timeout_ns; /* bound on the presync */
    int64_t deadline_ns;     /* the guardian thaws then: before the freeze a bound on
                              * waiting, from the first FIFREEZE that + timeout_ns */
    int64_t presync_start_ns;
    int64_t presync_end_ns;
    int64_t first_freeze_ns; /* the first FIFREEZE issued */
    uint64_t guardian_starttime;   /* /proc/PID/stat field 22, to recognise the guardian */
    uint64_t controller_starttime; /* ... and the controller */
    struct vmsnap_fs fs[128];
};

/* Switch off newer kernel/libc paths to exercise the fallbacks: */
#define VMSNAP_COMPAT_NO_PIDFD 1        /* as before Linux 5.3 */
#define VMSNAP_COMPAT_NO_CLOSE_RANGE 2  /* as before Linux 5.9 */
#define VMSNAP_COMPAT_NO_SYNCFS 4       /* no syncfs: presync skipped */
#define VMSNAP_COMPAT_NO_CGROUP 16      /* no usable cgroup v2: subreaper containment */
#define VMSNAP_COMPAT_NO_CGROUP_KILL 32 /* before 5.14: freeze the cgroup, kill each */
/* Sets the switched-off paths; returns the previous set. */
int vmsnap_compat_disable(int flags);

const char *vmsnap_core_version(void);
int vmsnap_core_abi(void);
int64_t vmsnap_now_ns(void);

/* --- freeze session (freeze.c, guardian.c, session.c) ----------------- */

/* Single ioctls, for the sequential strategy and for tests. */
int vmsnap_fifreeze(int fd);
int vmsnap_fithaw(int fd);
/* syncfs(2) (sync(2) where there is none), -errno on failure: the gentle
 * presync's paced flushes, outside any session. */
int vmsnap_syncfs(int fd);

/* The per-device dirty cap (dirtycap.c), also used outside a session by the
 * gentle presync while the pre-script runs.  save: each entry's device's
 * strict_limit and max_ratio_fine into SH (entries already saved keep their
 * value), returns how many entries hold one; set: caps each saved entry's
 * device at BYTES (strict_limit on); restore: puts back what was saved,
 * once (as vmsnap_thaw_state() does). */
int vmsnap_dirty_cap_save(struct vmsnap_shared *sh);
void vmsnap_dirty_cap_set(const struct vmsnap_shared *sh, int64_t bytes);
void vmsnap_dirty_cap_restore(struct vmsnap_shared *sh);

/* The one thaw from saved state, parents before children, used by the
 * controller when the guardian is gone and by `vmsnap thaw` / recovery from
 * a record.  Thaws each entry SH shows this session may have frozen
 * (freezing, frozen, thawing, thaw-failed) through FDS[i], the calling
 * process's own fd for entry i, or (FDS NULL) by opening its path; the fd
 * must be the recorded directory (dev, ino) or the entry is left alone
 * (ESTALE).  Restores rcu_expedited and the devices' dirty limits if SH
 * says they are still to be restored.
 * Updates the states in SH; returns 0 when no entry may still be frozen by
 * us, -EIO otherwise. */
int vmsnap_thaw_state(struct vmsnap_shared *sh, const int32_t *fds);

struct vmsnap_session;

/* Starts a guardian process for the filesystems described in INIT (level,
 * dev, ino and path of each of the n entries, timeout_ns,
 * presync_timeout_ns, deadline_ns: the bound before the freeze) with FDS[i]
 * the caller's open directory for entry i.  The guardian keeps its own
 * copies of the fds; the session keeps its own too (the caller may close
 * FDS).  The guardian thaws at the deadline, when the calling process dies,
 * on SIGUSR1/SIGUSR2/SIGTERM, or when asked.  RECORD_FD (or -1) receives the
 * crash record; RECORD_PATH is unlinked by the guardian once all is thawed. */
int vmsnap_session_start(const struct vmsnap_shared *init, const int32_t *fds, int record_fd,
                         const char *record_path, struct vmsnap_session **ret);
struct vmsnap_shared *vmsnap_session_shared(struct vmsnap_session *s);
int vmsnap_session_guardian_pid(struct vmsnap_session *s);
/* Presync (if asked, bounded by presync_timeout_ns) and freeze in waves.
 * Returns 0 when the guardian has finished the freeze (look at the
 * states), -EINTR on a signal (call again or thaw), -ETIMEDOUT when
 * WAIT_DEADLINE_NS passed, -ECHILD if the guardian died (everything was
 * thawed by the caller). */
int vmsnap_session_freeze(struct vmsnap_session *s, int presync, int64_t wait_deadline_ns);
/* Thaw everything this session froze, in reverse waves. */
int vmsnap_session_thaw(struct vmsnap_session *s, int64_t wait_deadline_ns);
/* Leave the guardian holding the freeze until its deadline or SIGUSR1. */
int vmsnap_session_detach(struct vmsnap_session *s);
/* Why the freeze is (being) undone, without waiting: the guardian's
 * thaw_reason, VMSNAP_THAW_EMERGENCY if the guardian is gone, else
 * VMSNAP_THAW_NONE. */
int vmsnap_session_thaw_cause(struct vmsnap_session *s);
/* Thaws from the shared states through the session's own fds (used when
 * the guardian is gone). */
int vmsnap_session_emergency_thaw(struct vmsnap_session *s);
/* Releases the session; a guardian not detached thaws when it sees this. */
void vmsnap_session_free(struct vmsnap_session *s);
/* Whether pid is alive and its /proc start time is STARTTIME. */
int vmsnap_process_matches(int pid, uint64_t starttime);

/* --- process supervision (spawn.c, contain.c) ------------------------ */

#define VMSNAP_SPAWN_NO_PIDFD 1   /* force the fallback (waiter thread) path */

/* How a child's whole tree is held (struct vmsnap_proc.containment). */
#define VMSNAP_CONTAIN_PGROUP 0     /* its process group only (neither below works) */
#define VMSNAP_CONTAIN_CGROUP 1     /* a cgroup v2 of its own, made for it */
#define VMSNAP_CONTAIN_SUBREAPER 2  /* we are a child subreaper; descendants tracked */

#define VMSNAP_CGROUP_PATH_MAX 256
#define VMSNAP_PROC_TRACKED 64

struct vmsnap_proc {
    int32_t pid;
    int32_t pidfd;           /* -1 on the fallback path */
    int32_t out_fd;          /* read end of the stdout+stderr pipe */
    int32_t exit_fd;         /* fallback: readable once the child exited */
    int32_t exited;          /* its exit status is known */
    int32_t reaped;          /* waited for: its pid (and group id) may be reused */
    int32_t exit_code;       /* -1 when killed by a signal */
    int32_t term_signal;     /* 0 when it exited */
    int32_t timed_out;
    int32_t spawn_errno;     /* exec failed (ENOENT, EACCES, ...): nothing ran */
    int32_t term_sent;
    int32_t kill_sent;
    int32_t used_fallback;
    int32_t group_alive;     /* live members of its tree left when done (timeout path) */
    int32_t containment;     /* VMSNAP_CONTAIN_* */
    int32_t cgroup_fd;       /* directory of its cgroup, -1 */
    int32_t drainer_pid;     /* took over the output pipe at close, 0 if none */
    int32_t n_tracked;       /* subreaper: descendants seen (pid + start time) */
    int32_t tracked_pid[64];
    uint64_t tracked_start[64];
    uint64_t starttime;      /* /proc/PID/stat field 22 of the child */
    int64_t start_ns;
    int64_t end_ns;          /* child exited */
    int64_t done_ns;         /* wait finished (tree gone after a timeout) */
    int64_t deadline_ns;
    int64_t kill_at_ns;
    uint64_t output_total;   /* bytes the child wrote (until the wait ended) */
    char *head;              /* first head_cap bytes of output */
    uint64_t head_cap;
    uint64_t head_len;
    char *tail;              /* ring of the last tail_cap bytes */
    uint64_t tail_cap;
    uint64_t tail_len;
    uint64_t tail_pos;
    char cgroup[256];        /* path of its cgroup, "" when not VMSNAP_CONTAIN_CGROUP */
};

/* Starts PATH with ARGV/ENVP (NULL-terminated) in a new session, in a cgroup
 * v2 of its own where one can be made (else with us as child subreaper),
 * stdin from /dev/null, stdout+stderr into a pipe, fds 3 and up closed,
 * umask 022, default signal dispositions and an empty mask.  P's head/tail
 * buffers are the caller's.  Returns 0, or -errno if nothing could be
 * started; an exec failure is not an error here: it sets spawn_errno and
 * exit_code 127/126. */
int vmsnap_proc_spawn(const char *path, char *const argv[], char *const envp[],
                      const char *cwd, int flags, struct vmsnap_proc *p);
/* Waits until the child exits, draining output.  At DEADLINE_NS its whole
 * tree gets SIGTERM+SIGCONT, then SIGKILL (cgroup.kill) GRACE_NS later, and
 * the wait ends when the tree is gone.  Returns 0 when done, -EINTR when a
 * signal arrived (call again, or kill and call again). */
int vmsnap_proc_wait(struct vmsnap_proc *p, int64_t deadline_ns, int64_t grace_ns);
/* SIGKILLs the child's whole tree (what a timeout does after the grace). */
int vmsnap_proc_kill_tree(struct vmsnap_proc *p);
/* Live processes in the child's tree (its cgroup, tracked descendants, or
 * its process group). */
int vmsnap_proc_tree_count(struct vmsnap_proc *p);
/* Closes the fds (the child must have been waited for).  An output pipe
 * still held open by what the child left running is handed to a detached
 * drainer process, which reads it until EOF: their writes never fail. */
void vmsnap_proc_close(struct vmsnap_proc *p);
/* The run is done with this child: reaps tracked orphans that are ours,
 * removes its cgroup if empty.  -EBUSY when processes remain in it (they are
 * left alone: call again later to remove it). */
int vmsnap_proc_release(struct vmsnap_proc *p);
/* Removes the empty per-run cgroups of controllers that are gone; returns
 * how many were removed. */
int vmsnap_cgroup_sweep(void);
/* Live (non-zombie) processes whose process group is PGID. */
int vmsnap_group_live_count(int pgid);

/* --- the reaper (reaper.c) ------------------------------------------ */

#define VMSNAP_REAPER_SLOTS 256
#define VMSNAP_RESUME_MAX 32768  /* bytes of argv + envp strings */
#define VMSNAP_RESUME_WAIT_MAX 16

/* Forks this process's reaper; returns its pid, or -errno.  *RET_FD is the
 * controller's end of a socket whose closing (our death) wakes the reaper:
 * keep it open for the life of the process. */
int vmsnap_reaper_start(int *ret_fd);
/* Registers P's tree under the key P->pid: its cgroup, or (without one) the
 * identities (pid + start time) of its live members and their process
 * group.  When this process dies, the reaper kills every tree still
 * registered (cgroup.kill, or pidfds of verified identities: never a bare
 * group id that may have been reused).  Replaces what the key had.
 * vmsnap_proc_spawn() already registers the child's cgroup (before the
 * clone) or its identity (right after), so that no instant exists where
 * our death would leave it running.  -ENOSPC when the table is full
 * (nothing is changed then). */
int vmsnap_reaper_watch(const struct vmsnap_proc *p);
/* One identity under KEY; the group PGID is killed too while the identity
 * is alive and still in it (0: no group). */
int vmsnap_reaper_watch_identity(int key, int pid, uint64_t starttime, int pgid);
/* Forgets everything under KEY; -ENOENT if there was nothing. */
int vmsnap_reaper_unwatch(int key);
/* What the reaper runs after it killed the registered trees: once each
 * WAIT_PIDS[i] (with /proc start time WAIT_STARTTIMES[i]) is gone, however
 * long that takes (a freeze guardian thaws at its own deadline; one stuck
 * in the kernel past it still holds a filesystem that the command could
 * block on), ARGV with environment ENVP in its own session, stdin and
 * stdout on /dev/null, stderr kept by the reaper.  The reaper waits for the
 * command and appends to LOG_PATH (NULL or "": the system log) when it
 * cannot be started, dies of a signal, or fails saying why on stderr (an
 * import error, a traceback), and every minute it waits for WAIT_PIDS.
 * ARGV NULL clears it.  -E2BIG when the strings or the pids do not fit.
 * A new command is written beside the registered one, then switched to: a
 * death at any instant of the update leaves the old one or the new one. */
int vmsnap_reaper_set_resume(char *const argv[], char *const envp[], const int32_t *wait_pids,
                             const uint64_t *wait_starttimes, int n_wait, const char *log_path);
/* The resume command's jobs that have run (a job: the resume's arguments
 * that ask for it, as bits of their indices; only the first 64 count).
 * resume_job_begin(ARGS): each process spawned from now on marks itself,
 * before its exec, as the attempt of that job; resume_job_done(ARGS): the
 * job has run, its arguments are dropped; resume_job_begin(0) forgets the
 * mark (the attempt was killed by us: the job has not run).  At our death
 * the reaper stops the marked attempt before its kill: one that had ended
 * already has run (its arguments are dropped too), one still running is
 * killed and the resume runs its job again.  vmsnap_reaper_set_resume
 * resets both. */
void vmsnap_reaper_resume_job_begin(uint64_t args);
void vmsnap_reaper_resume_job_done(uint64_t args);

/* cffi-cdef-end */

#endif /* VMSNAP_H */
