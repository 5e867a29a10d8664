/* session.c: the controller's side of a freeze session.
 *
 * Starts the guardian (guardian.c), sends it the commands of protocol.h and
 * reads its replies.  The session keeps its own copies of the filesystems'
 * fds: fd numbers are per process, so when the guardian is gone the
 * controller thaws through these (vmsnap_thaw_state()), never through
 * numbers from the shared block.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

#include "compat.h"
#include "freeze.h"
#include "guardian.h"
#include "helper.h"
#include "procfs.h"
#include "protocol.h"
#include "util.h"

struct vmsnap_session {
    struct vmsnap_shared *sh;
    int fds[VMSNAP_MAX_FS]; /* ours, dup'ed from the caller's */
    int nfds;
    int sock;
    int guardian_pid;
    int guardian_pidfd;
    int reaped;
    enum proto_msg awaiting; /* a command was sent and its reply not yet read (0: none) */
    char *record_path;
};

static void session_freep(struct vmsnap_session **s) {
    vmsnap_session_free(*s);
}

static int await_reply(struct vmsnap_session *s, enum proto_msg want, int64_t deadline) {
    for (;;) {
        struct pollfd pfd = {.fd = s->sock, .events = POLLIN};
        int r = poll_until(&pfd, 1, deadline);
        if (r < 0)
            return -errno; /* -EINTR goes back to Python so Ctrl-C works */
        if (r == 0)
            return -ETIMEDOUT;
        enum proto_msg m = 0;
        r = proto_recv(s->sock, &m);
        if (r == -EAGAIN || r == -EINTR)
            continue;
        if (r <= 0 || m == REPLY_THAWED || m == REPLY_START_FAILED) {
            s->awaiting = 0;
            if (r <= 0 && !__atomic_load_n(&s->sh->guardian_done, __ATOMIC_ACQUIRE)) {
                /* the guardian died: do its job */
                vmsnap_session_emergency_thaw(s);
                return -ECHILD;
            }
            if (m == REPLY_START_FAILED)
                return -ECHILD;
            if (m == want || r <= 0)
                return 0;
            return -ECANCELED; /* the guardian thawed on its own (deadline, signal) */
        }
        if (m == want) {
            s->awaiting = 0;
            return 0;
        }
    }
}

static int command(struct vmsnap_session *s, enum proto_msg cmd, enum proto_msg want,
                   int64_t deadline) {
    if (!s->awaiting) {
        int r = proto_send(s->sock, cmd);
        if (r < 0 && r != -EPIPE && r != -ECONNRESET)
            return r; /* a gone guardian shows as EOF in await_reply */
        s->awaiting = cmd;
    }
    return await_reply(s, want, deadline);
}

static int session_new(const struct vmsnap_shared *init, const int32_t *fds,
                       const char *record_path, struct vmsnap_session **ret) {
    _cleanup_(session_freep) struct vmsnap_session *s = calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->sock = s->guardian_pidfd = -1;
    s->sh = MAP_FAILED;
    s->record_path = strdup(record_path ? record_path : "");
    if (!s->record_path)
        return -ENOMEM;
    s->sh = mmap(NULL, sizeof *s->sh, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (s->sh == MAP_FAILED)
        return -errno;
    for (; s->nfds < init->n; s->nfds++) {
        s->fds[s->nfds] = fcntl(fds[s->nfds], F_DUPFD_CLOEXEC, 3);
        if (s->fds[s->nfds] < 0)
            return -errno;
    }
    struct vmsnap_shared *sh = s->sh;
    memcpy(sh, init, record_size(init));
    sh->magic = VMSNAP_RECORD_MAGIC;
    sh->abi = VMSNAP_ABI_VERSION;
    sh->controller_pid = getpid();
    procfs_start_time(sh->controller_pid, &sh->controller_starttime);
    sh->rcu_restore = -1;
    sh->first_freeze_ns = 0;
    for (int i = 0; i < sh->n; i++)
        sh->fs[i].state = VMSNAP_FS_PENDING;
    *ret = s;
    s = NULL;
    return 0;
}

/* Forks the guardian; our ends of the socket and pidfd are closed on return,
 * so that the guardian's death shows as EOF. */
static int fork_guardian(struct vmsnap_session *s, int record_fd) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
        return -errno;
    s->sock = sv[0];
    _cleanup_close_ int guardian_end = sv[1];
    _cleanup_close_ int ctl_pidfd = compat_pidfd_open(getpid()); /* -1 on old kernels: the socket suffices */
    pid_t pid = helper_fork(); /* the guardian sets up its own signalfd */
    if (pid == 0) {
        close(s->sock);
        guardian_main(s->sh, s->fds, guardian_end, ctl_pidfd, record_fd, s->record_path);
    }
    if (pid < 0)
        return -errno;
    s->guardian_pid = pid;
    s->guardian_pidfd = compat_pidfd_open(pid);
    s->sh->guardian_pid = pid;
    procfs_start_time(pid, &s->sh->guardian_starttime);
    return 0;
}

int vmsnap_session_start(const struct vmsnap_shared *init, const int32_t *fds, int record_fd,
                         const char *record_path, struct vmsnap_session **ret) {
    if (init->n < 1 || init->n > VMSNAP_MAX_FS || init->timeout_ns <= 0 || !fds)
        return -EINVAL;
    _cleanup_(session_freep) struct vmsnap_session *s = NULL;
    int r = session_new(init, fds, record_path, &s);
    if (r < 0)
        return r;
    r = fork_guardian(s, record_fd);
    if (r < 0)
        return r;
    record_write(record_fd, s->sh);
    r = await_reply(s, REPLY_READY, now_ns() + 10LL * 1000000000LL);
    if (r < 0)
        return r == -EINTR ? -EINTR : -ECHILD;
    *ret = s;
    s = NULL;
    return 0;
}

struct vmsnap_shared *vmsnap_session_shared(struct vmsnap_session *s) { return s->sh; }
int vmsnap_session_guardian_pid(struct vmsnap_session *s) { return s->guardian_pid; }

int vmsnap_session_freeze(struct vmsnap_session *s, int presync, int64_t wait_deadline_ns) {
    return command(s, presync ? CMD_PRESYNC_FREEZE : CMD_FREEZE, REPLY_FROZEN, wait_deadline_ns);
}

int vmsnap_session_thaw(struct vmsnap_session *s, int64_t wait_deadline_ns) {
    if (__atomic_load_n(&s->sh->guardian_done, __ATOMIC_ACQUIRE))
        return 0;
    if (s->awaiting && s->awaiting != CMD_THAW)
        s->awaiting = 0; /* an interrupted freeze: the thaw supersedes it */
    return command(s, CMD_THAW, REPLY_THAWED, wait_deadline_ns);
}

int vmsnap_session_detach(struct vmsnap_session *s) {
    return command(s, CMD_DETACH, REPLY_DETACHED, now_ns() + 5LL * 1000000000LL);
}

int vmsnap_session_thaw_cause(struct vmsnap_session *s) {
    int reason = __atomic_load_n(&s->sh->thaw_reason, __ATOMIC_ACQUIRE);
    if (reason != VMSNAP_THAW_NONE)
        return reason;
    if (!vmsnap_process_matches(s->guardian_pid, s->sh->guardian_starttime))
        return VMSNAP_THAW_EMERGENCY; /* gone (or a zombie) without a word */
    return VMSNAP_THAW_NONE;
}

int vmsnap_session_emergency_thaw(struct vmsnap_session *s) {
    int none = VMSNAP_THAW_NONE;
    __atomic_compare_exchange_n(&s->sh->thaw_reason, &none, VMSNAP_THAW_EMERGENCY, 0,
                                __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    return vmsnap_thaw_state(s->sh, s->fds);
}

void vmsnap_session_free(struct vmsnap_session *s) {
    if (!s)
        return;
    if (s->sock >= 0)
        close(s->sock); /* a guardian not detached thaws on EOF */
    if (s->guardian_pid > 0 && !s->reaped && !s->sh->detached) {
        /* give it a moment to finish, but never hang on a stuck one */
        if (s->guardian_pidfd >= 0) {
            struct pollfd pfd = {.fd = s->guardian_pidfd, .events = POLLIN};
            poll(&pfd, 1, 2000);
        }
        if (waitpid(s->guardian_pid, NULL, WNOHANG) == s->guardian_pid)
            s->reaped = 1;
    }
    if (s->guardian_pidfd >= 0)
        close(s->guardian_pidfd);
    for (int i = 0; i < s->nfds; i++)
        close(s->fds[i]);
    if (s->sh != MAP_FAILED)
        munmap(s->sh, sizeof *s->sh);
    free(s->record_path);
    free(s);
}
