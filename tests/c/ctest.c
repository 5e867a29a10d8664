/* ctest.c: C tests of the native core, no framework.
 *
 *     ctest [MOUNTPOINT [INNER...]]
 *
 * Supervision tests always run (on the pidfd path and on the fallback).
 * Freeze tests run when MOUNTPOINT (a scratch filesystem the caller made
 * for this) is given; the wave tests when INNER filesystems, mounted
 * inside MOUNTPOINT, are given too (children frozen first, thawed last).
 * Where FIFREEZE answers ENOSYS — qemu-user does not pass these ioctls
 * through — the freeze tests are reported as skipped, "not supported by
 * the emulator", which is not a failure.  The last line is "N passed,
 * N failed, N skipped".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "vmsnap.h"

static int passed, failed, skipped;
extern char **environ;

#define CHECK(cond, ...)                                        \
    do {                                                        \
        if (cond) {                                             \
            passed++;                                           \
        } else {                                                \
            failed++;                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);         \
            printf(__VA_ARGS__);                                \
            printf("\n");                                       \
        }                                                       \
    } while (0)

static int64_t ms_since(int64_t t0) { return (vmsnap_now_ns() - t0) / 1000000; }

/* Runs ARGV under supervision; the caller frees nothing (static buffers). */
static struct vmsnap_proc run(char *const argv[], int flags, int64_t timeout_ms, int64_t grace_ms) {
    static char head[2048], tail[2048];
    struct vmsnap_proc p;
    memset(&p, 0, sizeof p);
    p.head = head;
    p.head_cap = sizeof head;
    p.tail = tail;
    p.tail_cap = sizeof tail;
    int r = vmsnap_proc_spawn(argv[0], argv, environ, NULL, flags, &p);
    if (r < 0) {
        printf("FAIL spawn %s: %s\n", argv[0], strerror(-r));
        failed++;
        return p;
    }
    int64_t deadline = timeout_ms ? p.start_ns + timeout_ms * 1000000 : 0;
    while (vmsnap_proc_wait(&p, deadline, grace_ms * 1000000) == -EINTR)
        ;
    vmsnap_proc_close(&p);
    vmsnap_proc_release(&p);
    return p;
}

/* Dead (or a zombie: dead, not yet reaped by its new parent). */
static int gone(int pid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    char *line = fgets(buf, sizeof buf, f);
    fclose(f);
    char *end = line ? strrchr(line, ')') : NULL;
    return !end || end[2] == 'Z' || end[2] == 'X';
}

static void test_supervision(int flags) {
    const char *path = flags ? "fallback" : "pidfd";
    char *t[] = {"/bin/true", NULL};
    struct vmsnap_proc p = run(t, flags, 5000, 100);
    CHECK(p.exit_code == 0 && !p.timed_out, "[%s] /bin/true exit %d", path, p.exit_code);
    CHECK(p.used_fallback == (flags != 0), "[%s] fallback used: %d", path, p.used_fallback);

    char *e[] = {"/bin/sh", "-c", "echo out; echo err >&2; exit 3", NULL};
    p = run(e, flags, 5000, 100);
    CHECK(p.exit_code == 3 && p.head_len == 8 && memcmp(p.head, "out\nerr\n", 8) == 0,
          "[%s] exit 3 with output: exit %d, %d bytes", path, p.exit_code, (int)p.head_len);

    char *k[] = {"/bin/sh", "-c", "kill -9 $$", NULL};
    p = run(k, flags, 5000, 100);
    CHECK(p.exit_code == -1 && p.term_signal == 9, "[%s] killed by 9: signal %d", path, p.term_signal);

    char *nf[] = {"/nonexistent/vmsnap-ctest", NULL};
    p = run(nf, flags, 5000, 100);
    CHECK(p.spawn_errno == ENOENT && p.exit_code == 127, "[%s] not found: errno %d exit %d", path,
          p.spawn_errno, p.exit_code);

    /* a grandchild that ignores SIGTERM: the whole group is gone at the end */
    char *g[] = {"/bin/sh", "-c", "sh -c \"trap '' TERM; sleep 30\" & sleep 30", NULL};
    int64_t t0 = vmsnap_now_ns();
    p = run(g, flags, 200, 100);
    CHECK(p.timed_out && p.kill_sent && ms_since(t0) < 3000, "[%s] timeout: timed_out %d in %lld ms",
          path, p.timed_out, (long long)ms_since(t0));
    CHECK(vmsnap_group_live_count(p.pid) == 0, "[%s] group left alive after the timeout", path);

    /* a child that left the group (setsid) dies with the tree at the timeout */
    char pidfile[] = "/tmp/vmsnap-ctest-XXXXXX";
    int pf = mkstemp(pidfile);
    char setsid_cmd[256];
    snprintf(setsid_cmd, sizeof setsid_cmd,
             "setsid sh -c 'echo $$ > %s; exec sleep 30' & sleep 0.3; sleep 30", pidfile);
    char *ss[] = {"/bin/sh", "-c", setsid_cmd, NULL};
    p = run(ss, flags, 400, 100);
    char buf[32] = "";
    int escaped = pf >= 0 && read(pf, buf, sizeof buf - 1) > 0 ? atoi(buf) : 0;
    int64_t t1 = vmsnap_now_ns();
    while (escaped > 0 && !gone(escaped) && ms_since(t1) < 2000)
        usleep(10000);
    CHECK(p.timed_out && escaped > 0 && gone(escaped), "[%s] setsid child %d outlived the timeout (%s)",
          path, escaped, p.containment == VMSNAP_CONTAIN_CGROUP ? "cgroup" : "subreaper");
    if (escaped > 0 && !gone(escaped))
        kill(escaped, SIGKILL);
    if (pf >= 0)
        close(pf);
    unlink(pidfile);

    /* an inherited fd (no O_CLOEXEC) does not reach the child; umask 022 */
    int leak = open("/dev/null", O_RDONLY);
    char fdcheck[128];
    snprintf(fdcheck, sizeof fdcheck, "test -e /proc/self/fd/%d && exit 9; test $(umask) = 0022", leak);
    char *fdc[] = {"/bin/sh", "-c", fdcheck, NULL};
    p = run(fdc, flags, 5000, 100);
    CHECK(p.exit_code == 0, "[%s] fd %d leaked or umask wrong: exit %d", path, leak, p.exit_code);
    close(leak);

    /* 1 MB of output, 4 KB kept: bounded, never blocked */
    char *big[] = {"/bin/sh", "-c", "head -c 1000000 /dev/zero | tr '\\0' x; echo END", NULL};
    p = run(big, flags, 10000, 100);
    CHECK(p.exit_code == 0 && p.output_total == 1000004 && p.tail_len == 2048 &&
              p.tail[(p.tail_pos + 2047) % 2048] == '\n',
          "[%s] big output: exit %d, total %llu", path, p.exit_code, (unsigned long long)p.output_total);

    /* a background child holding the pipe: returns at the child's exit */
    char *bg[] = {"/bin/sh", "-c", "sleep 3 & echo started", NULL};
    t0 = vmsnap_now_ns();
    p = run(bg, flags, 10000, 100);
    CHECK(p.exit_code == 0 && ms_since(t0) < 1500, "[%s] background holder: %lld ms", path,
          (long long)ms_since(t0));
    if (p.pid > 0)
        kill(-p.pid, SIGKILL);
}

/* 1: frozen (someone holds a freeze), 0: not frozen.  Probes with FIFREEZE. */
static int is_frozen(int fd) {
    int r = vmsnap_fifreeze(fd);
    if (r == -EBUSY)
        return 1;
    if (r == 0)
        vmsnap_fithaw(fd);
    return 0;
}

static int start_session(int fd, const char *mount, int64_t timeout_ms, struct vmsnap_session **s) {
    static struct vmsnap_shared init;
    memset(&init, 0, sizeof init);
    struct stat st;
    fstat(fd, &st);
    init.n = 1;
    init.timeout_ns = timeout_ms * 1000000;
    init.presync_timeout_ns = init.timeout_ns;
    init.deadline_ns = vmsnap_now_ns() + 2 * init.timeout_ns;
    init.expedite_rcu = 1;
    init.fs[0].dev = st.st_dev;
    init.fs[0].ino = st.st_ino;
    snprintf(init.fs[0].path, sizeof init.fs[0].path, "%s", mount);
    int32_t fds[1] = {fd};
    return vmsnap_session_start(&init, fds, -1, NULL, s);
}

static void test_freeze(const char *mount) {
    int fd = open(mount, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        printf("FAIL cannot open %s: %s\n", mount, strerror(errno));
        failed++;
        return;
    }
    int r = vmsnap_fifreeze(fd);
    if (r == -ENOSYS || r == -ENOTTY) {
        printf("SKIP freeze tests: FIFREEZE not supported by the emulator (%s)\n", strerror(-r));
        skipped += 13;
        close(fd);
        return;
    }
    CHECK(r == 0, "FIFREEZE: %s", strerror(-r));
    CHECK(vmsnap_fifreeze(fd) == -EBUSY, "a second FIFREEZE must be EBUSY");
    CHECK(vmsnap_fithaw(fd) == 0, "FITHAW");
    CHECK(vmsnap_fithaw(fd) == -EINVAL, "FITHAW of a thawed fs must be EINVAL");

    struct vmsnap_session *s;
    r = start_session(fd, mount, 10000, &s);
    CHECK(r == 0, "session start: %s", strerror(-r));
    if (r == 0) {
        r = vmsnap_session_freeze(s, 1, vmsnap_now_ns() + 10000000000LL);
        struct vmsnap_shared *sh = vmsnap_session_shared(s);
        CHECK(r == 0 && sh->fs[0].state == VMSNAP_FS_FROZEN, "session freeze: %d state %d", r,
              sh->fs[0].state);
        r = vmsnap_session_thaw(s, vmsnap_now_ns() + 10000000000LL);
        CHECK(r == 0 && sh->fs[0].state == VMSNAP_FS_THAWED, "session thaw: %d state %d", r,
              sh->fs[0].state);
        vmsnap_session_free(s);
    }

    /* the deadline thaws */
    r = start_session(fd, mount, 200, &s);
    CHECK(r == 0, "session start (deadline test): %s", strerror(-r));
    if (r == 0) {
        vmsnap_session_freeze(s, 0, vmsnap_now_ns() + 10000000000LL);
        struct timespec ts = {0, 400000000};
        nanosleep(&ts, NULL);
        struct vmsnap_shared *sh = vmsnap_session_shared(s);
        CHECK(sh->deadline_hit && sh->fs[0].state == VMSNAP_FS_THAWED && !is_frozen(fd),
              "deadline: hit %d state %d", sh->deadline_hit, sh->fs[0].state);
        vmsnap_session_free(s);
    }

    /* the controller dies: the guardian thaws */
    pid_t child = fork();
    if (child == 0) {
        struct vmsnap_session *cs;
        if (start_session(fd, mount, 30000, &cs) == 0 &&
            vmsnap_session_freeze(cs, 0, vmsnap_now_ns() + 10000000000LL) == 0 &&
            is_frozen(fd))
            kill(getpid(), SIGKILL);
        _exit(1);   /* not frozen: the check below fails on the exit status */
    }
    int status;
    waitpid(child, &status, 0);
    int64_t t0 = vmsnap_now_ns();
    while (is_frozen(fd) && ms_since(t0) < 2000) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    CHECK(WIFSIGNALED(status) && !is_frozen(fd), "guardian thaw after SIGKILL: %lld ms",
          (long long)ms_since(t0));

    /* the guardian dies: the controller thaws through its own fd */
    r = start_session(fd, mount, 30000, &s);
    if (r == 0) {
        struct vmsnap_shared *sh = vmsnap_session_shared(s);
        vmsnap_session_freeze(s, 0, vmsnap_now_ns() + 10000000000LL);
        CHECK(vmsnap_session_thaw_cause(s) == VMSNAP_THAW_NONE, "no thaw cause while frozen");
        kill(vmsnap_session_guardian_pid(s), SIGKILL);
        r = vmsnap_session_thaw(s, vmsnap_now_ns() + 10000000000LL);
        CHECK(r == -ECHILD && sh->fs[0].state == VMSNAP_FS_THAWED && !is_frozen(fd) &&
              sh->thaw_reason == VMSNAP_THAW_EMERGENCY && sh->rcu_restore == -1,
              "emergency thaw: %d state %d", r, sh->fs[0].state);
        vmsnap_session_free(s);
    }

    /* thaw from a record: by path, only the recorded directory */
    static struct vmsnap_shared rec;
    struct stat st;
    fstat(fd, &st);
    memset(&rec, 0, sizeof rec);
    rec.n = 1;
    rec.rcu_restore = -1;
    rec.fs[0] = (struct vmsnap_fs){.state = VMSNAP_FS_FROZEN, .dev = st.st_dev, .ino = st.st_ino + 1};
    snprintf(rec.fs[0].path, sizeof rec.fs[0].path, "%s", mount);
    vmsnap_fifreeze(fd);
    r = vmsnap_thaw_state(&rec, NULL);
    CHECK(r == -EIO && rec.fs[0].thaw_errno == ESTALE && is_frozen(fd), "another directory: left alone");
    rec.fs[0].ino = st.st_ino;
    rec.fs[0].state = VMSNAP_FS_FROZEN;
    r = vmsnap_thaw_state(&rec, NULL);
    CHECK(r == 0 && rec.fs[0].state == VMSNAP_FS_THAWED && !is_frozen(fd), "thaw by path: %d", r);
    rec.fs[0].state = VMSNAP_FS_FROZEN;
    r = vmsnap_thaw_state(&rec, NULL);
    CHECK(r == 0 && rec.fs[0].state == VMSNAP_FS_NOT_FROZEN, "not frozen: %d state %d", r,
          rec.fs[0].state);
    vmsnap_fifreeze(fd);
    rec.fs[0].state = VMSNAP_FS_PENDING;
    r = vmsnap_thaw_state(&rec, NULL);
    CHECK(r == 0 && is_frozen(fd), "a pending entry is never thawed");
    vmsnap_fithaw(fd);
    close(fd);
}

/* A session over MOUNT (level 1) and the N filesystems mounted inside it
 * (level 0): the children freeze in the first wave, the parent after them;
 * the parent thaws first. */
static void test_waves(const char *mount, char **inner, int n) {
    static struct vmsnap_shared init;
    int32_t fds[VMSNAP_MAX_FS];
    memset(&init, 0, sizeof init);
    init.n = n + 1;
    init.timeout_ns = 10000000000LL;
    init.presync_timeout_ns = init.timeout_ns;
    init.deadline_ns = vmsnap_now_ns() + 2 * init.timeout_ns;
    for (int i = 0; i <= n; i++) {
        const char *path = i == 0 ? mount : inner[i - 1];
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) < 0) {
            printf("FAIL cannot open %s: %s\n", path, strerror(errno));
            failed++;
            for (int j = 0; j < i; j++)
                close(fds[j]);
            if (fd >= 0)
                close(fd);
            return;
        }
        fds[i] = fd;
        init.fs[i].dev = st.st_dev;
        init.fs[i].ino = st.st_ino;
        init.fs[i].level = i == 0 ? 1 : 0;
        snprintf(init.fs[i].path, sizeof init.fs[i].path, "%s", path);
    }
    struct vmsnap_session *s;
    int r = vmsnap_session_start(&init, fds, -1, NULL, &s);
    CHECK(r == 0, "session start (waves): %s", strerror(-r));
    if (r == 0) {
        struct vmsnap_shared *sh = vmsnap_session_shared(s);
        r = vmsnap_session_freeze(s, 1, vmsnap_now_ns() + 10000000000LL);
        int all_frozen = 1;
        for (int i = 0; i <= n; i++)
            all_frozen &= sh->fs[i].state == VMSNAP_FS_FROZEN && is_frozen(fds[i]);
        CHECK(r == 0 && all_frozen, "waves: freeze %d, all frozen %d", r, all_frozen);
        r = vmsnap_session_thaw(s, vmsnap_now_ns() + 10000000000LL);
        CHECK(r == 0, "waves: thaw %d", r);
        for (int i = 1; i <= n; i++) {
            struct vmsnap_fs *c = &sh->fs[i], *p = &sh->fs[0];
            CHECK(c->freeze_end_ns <= p->freeze_start_ns, "%s frozen after its parent", c->path);
            CHECK(p->thaw_end_ns <= c->thaw_start_ns, "%s thawed before its parent", c->path);
            CHECK(c->state == VMSNAP_FS_THAWED && !is_frozen(fds[i]), "%s left frozen", c->path);
        }
        CHECK(!is_frozen(fds[0]), "%s left frozen", mount);
        vmsnap_session_free(s);
    }
    for (int i = 0; i <= n; i++)
        close(fds[i]);
}

/* The resume re-registered: a death between the new command's write and
 * its switch (here a SIGKILL from the test hook) leaves the old command
 * registered, which the reaper then runs; never none. */
extern void (*vmsnap_reaper_test_before_switch)(void);

static void die_now(void) { raise(SIGKILL); }

static void test_resume_update_is_atomic(void) {
    char dir[] = "/tmp/vmsnap-ctest-XXXXXX";
    if (!mkdtemp(dir)) {
        printf("FAIL mkdtemp: %s\n", strerror(errno));
        failed++;
        return;
    }
    char ran[64], old_cmd[128], new_cmd[128];
    snprintf(ran, sizeof ran, "%s/ran", dir);
    snprintf(old_cmd, sizeof old_cmd, "echo old >> %s", ran);
    snprintf(new_cmd, sizeof new_cmd, "echo new >> %s", ran);
    pid_t pid = fork();
    if (pid == 0) {
        int fd;
        char *old_argv[] = {"/bin/sh", "-c", old_cmd, NULL};
        char *new_argv[] = {"/bin/sh", "-c", new_cmd, "with", "more", "arguments", NULL};
        char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        if (vmsnap_reaper_start(&fd) < 0 ||
            vmsnap_reaper_set_resume(old_argv, envp, NULL, NULL, 0, NULL) < 0)
            _exit(2);
        vmsnap_reaper_test_before_switch = die_now;
        vmsnap_reaper_set_resume(new_argv, envp, NULL, NULL, 0, NULL);
        _exit(3); /* not reached */
    }
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
          "resume update: the controller was not killed midway (status %#x)", status);
    char got[64] = "";
    int64_t t0 = vmsnap_now_ns();
    while (ms_since(t0) < 10000) {
        int f = open(ran, O_RDONLY | O_CLOEXEC);
        if (f >= 0) {
            ssize_t k = read(f, got, sizeof got - 1);
            close(f);
            if (k > 0 && got[k - 1] == '\n') {
                got[k] = 0;
                break;
            }
        }
        usleep(20000);
    }
    CHECK(strcmp(got, "old\n") == 0,
          "resume update killed before its switch: the reaper ran %s, not the old command",
          got[0] ? got : "nothing");
    unlink(ran);
    rmdir(dir);
}

int main(int argc, char **argv) {
    printf("vmsnap core %s (ABI %d) C tests\n", vmsnap_core_version(), vmsnap_core_abi());
    test_supervision(0);
    test_supervision(VMSNAP_SPAWN_NO_PIDFD);
    test_resume_update_is_atomic();
    if (argc > 1) {
        int before = skipped;
        test_freeze(argv[1]);
        if (skipped > before) {
            skipped++;   /* no FIFREEZE here: no waves either */
        } else if (argc > 2) {
            test_waves(argv[1], argv + 2, argc - 2);
        } else {
            printf("SKIP wave tests: no filesystem inside the scratch mount point given\n");
            skipped++;
        }
    } else {
        printf("SKIP freeze tests: no scratch mount point given\n");
        skipped += 13;
    }
    printf("%d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
