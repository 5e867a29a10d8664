# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT
"""Runs the vmsnap module and adds ``clock``: the host's wall-clock offset to
the controller's, measured on the task's own connection.

The host reads its clock between the controller's two readings t0 and t1, so
offset = host - controller lies in [host - t1, host - t0]: we report the
middle and half the width as a hard bound (``uncertainty``).

For ``command=end`` (and ``command=release``, which does only that) the
first thing on the host is the release: one shell command on the task's
connection (no Python starts on the host before the thaw); the clock is
read after it, then the module collects the result.
For ``command=arm`` the clock is read after the module (the host is armed
then; the controller tells it when to freeze on that offset)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ctypes
import datetime
import functools
import json
import os
import shlex
import signal
import stat
import subprocess
import tempfile
import time

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase

FMT = "%Y-%m-%d %H:%M:%S.%f"   # ansible.builtin.command's start and end
STEP_LOCK, STEP_RESULT = "step.lock", "step.json"

# The release (see the module's WAITER): an armed host not frozen yet is
# told not to (told or not: one told an instant still ahead stops waiting);
# the verdict file, then a line on the session's FIFO that wakes the waiting
# step at once. Opened read-write, the FIFO never blocks, even when the step
# is gone. Files are written with set -C to fresh temp names, then renamed.
# Prints what it did and the host's clock just after.
RELEASE = (
    'd=%s; v=%s; '
    'if [ ! -d "$d" ]; then echo absent; '
    'elif [ -e "$d/release" ] || [ -e "$d/result.json" ]; then echo already; '
    'else umask 077; set -C; rm -f "$d/freeze_at.tmp" "$d/release.tmp" || exit 1; '
    '{ echo "abort the group was released before this host froze" > "$d/freeze_at.tmp" '
    '&& mv "$d/freeze_at.tmp" "$d/freeze_at"; }; '
    'printf "%%s\\n" "$v" > "$d/release.tmp" && mv "$d/release.tmp" "$d/release" || exit 1; '
    '[ -p "$d/release.fifo" ] && { exec 3<>"$d/release.fifo"; echo go >&3; }; echo released; fi; '
    'date +%%s.%%N')


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False

    def measure_clock(self):
        best = None
        for dummy in range(3):   # keep the tightest of a few round trips
            t0 = time.time()
            res = self._low_level_execute_command("date +%s.%N", sudoable=False)
            t1 = time.time()
            try:
                host = float(res.get("stdout", "").strip())
            except ValueError:
                return {"offset": None, "uncertainty": None,
                        "error": "cannot read the host's clock: %s" % res.get("stderr", "")[:200]}
            sample = {"offset": host - (t0 + t1) / 2, "uncertainty": (t1 - t0) / 2,
                      "measured_at": t1}
            if best is None or sample["uncertainty"] < best["uncertainty"]:
                best = sample
        return best

    def group_step(self, step):
        """The group's snapshot step, once for the play: the first host's worker
        to get here runs it (on the controller, once ``not_before`` has passed),
        the others wait for its result in the same directory; then each
        releases its host at once, over the connection it already holds, so
        that no fan-out of tasks lies between the step's end and the thaws."""
        if not isinstance(step, dict) or not isinstance(step.get("argv"), list) or not step["argv"]:
            raise AnsibleActionFail("step: give argv (the snapshot command, a non-empty list), "
                                    "not_before and dir")
        d = str(step.get("dir") or "")
        try:
            st = os.lstat(d)
        except OSError as exc:
            raise AnsibleActionFail("step: dir %s: %s" % (d, exc))
        # a directory of this controller user's, private to it: nobody else may
        # plant a result or take the step's lock
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise AnsibleActionFail("step: dir %s must be a directory of this user's, mode 0700" % d)
        try:
            until = float(step.get("not_before") or 0)
            bound = float(300 if step.get("timeout") in (None, "") else step["timeout"])
        except (TypeError, ValueError):
            raise AnsibleActionFail("step: not_before and timeout are numbers of seconds")
        if bound <= 0:
            raise AnsibleActionFail("step: timeout must be more than 0 seconds")
        try:
            fd = os.open(os.path.join(d, STEP_LOCK), os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            fd = None
        if fd is not None:
            try:   # who runs it: the others stop waiting if this process is gone
                os.write(fd, b"%d\n" % os.getpid())
            finally:
                os.close(fd)
            res = run_step([to_text(a) for a in step["argv"]], until, bound)
            tmp = os.path.join(d, "step.json.%d" % os.getpid())
            with open(tmp, "x") as f:
                json.dump(res, f)
            os.rename(tmp, os.path.join(d, STEP_RESULT))
            return dict(res, ran_here=True)
        # another host's worker runs it (and stops it at the bound): wait for its
        # result (on the monotonic clock), a little longer than the bound
        give_up = time.monotonic() + max(0.0, until - time.time()) + bound + 10
        path = os.path.join(d, STEP_RESULT)
        checked = 0.0
        while time.monotonic() < give_up:
            try:
                with open(path) as f:
                    res = json.load(f)
            except FileNotFoundError:
                time.sleep(0.005)
            except ValueError:
                break
            else:
                # a result for another not_before is an earlier step's: the
                # directory was used before (one per group snapshot)
                if not isinstance(res, dict) or res.get("not_before") != until:
                    return {"rc": None, "failed": True, "ran_here": False,
                            "msg": "the step's result in %s is for another not_before: an "
                                   "earlier group snapshot's (a step directory serves one "
                                   "group snapshot); released as failed" % d}
                return dict(res, ran_here=False)
            if time.monotonic() - checked > 0.5:
                checked = time.monotonic()
                if not runner_alive(d):
                    return {"rc": None, "failed": True, "ran_here": False,
                            "msg": "the worker that ran the snapshot step is gone without "
                                   "its result: released as failed"}
        return {"rc": None, "failed": True, "ran_here": False,
                "msg": "the snapshot step did not end within %gs: released as failed" % bound}

    def release(self, snapshot_ok=None):
        args = self._task.args
        # the host's window must reach past the step's end on its corrected
        # clock: the role asks to release no sooner than the end + twice the
        # host's clock uncertainty (only the first hosts of a fan-out wait)
        try:
            until = float(args.get("not_before") or 0)
        except (TypeError, ValueError):
            until = 0.0
        now = time.monotonic()   # waited on the monotonic clock (a wall-clock step moves nothing)
        target = now + (until - time.time())
        while now < target:
            time.sleep(min(target - now, 1.0))
            now = time.monotonic()
        d = "%s/%s" % (args.get("state_dir") or "/run/vmsnap-fleet", args.get("group") or "default")
        ok = args.get("snapshot_ok", True) if snapshot_ok is None else snapshot_ok
        ok = ok if isinstance(ok, bool) else str(ok).lower() in ("1", "true", "yes", "on")
        # read before the command goes: a host that says "released" thawed after this
        # instant (controller clock), whatever its own clock says
        sent_at = time.time()
        res = self._low_level_execute_command(RELEASE % (shlex.quote(d), "ok" if ok else "failed"))
        words = res.get("stdout", "").split()
        out = {"state": words[0] if words else None, "rc": res.get("rc"), "sent_at": sent_at,
               "stderr": res.get("stderr", "")[:2000], "host_time": None}
        try:
            out["host_time"] = float(words[-1])
        except (IndexError, ValueError):
            pass
        return out

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        command = self._task.args.get("command")
        if command == "arm" or (command == "release" and self._task.args.get("step")):
            refuse_unsynchronised_play(self._task)
        release = None
        snapshot = None
        if command == "release" and self._task.args.get("step") and not self._task.check_mode:
            snapshot = self.group_step(self._task.args["step"])
        if command in ("end", "release") and not self._task.check_mode:
            release = self.release(None if snapshot is None else
                                   (snapshot.get("rc") == 0 and not snapshot.get("failed")))
        if command == "clock":
            # the clock alone, no module: the role reads a few hosts' at a time,
            # on a controller with little else to do, for a tight bound
            clock = self.measure_clock()
            result.update(changed=False, clock=clock,
                          failed=clock.get("offset") is None,
                          msg="offset %s s, uncertainty %s s" % (clock.get("offset"),
                                                                 clock.get("uncertainty")))
            return result
        if command == "release" and release is not None:
            # nothing else: no clock, no module (the `end` task after it collects)
            failed = release["rc"] != 0 or release["state"] not in ("released", "already", "absent")
            result.update(changed=release["state"] == "released", failed=failed, release=release,
                          msg="release: %s" % (release["state"] or release["stderr"]))
            if snapshot is not None:
                result["snapshot"] = snapshot
            return result
        clock = self.measure_clock() if command != "arm" else None
        result.update(self._execute_module(module_name="vmsnap.fleet.vmsnap",
                                           module_args=self._task.args, task_vars=task_vars))
        if command == "arm":
            clock = self.measure_clock()
        result["clock"] = clock
        if release is not None:
            result["release"] = release
        return result


def runner_alive(d):
    """Whether the process that took the step's lock in D may still write its
    result (unknown: yes)."""
    try:
        with open(os.path.join(d, STEP_LOCK)) as f:
            pid = int(f.read(32).split()[0])
    except (OSError, ValueError, IndexError):
        return True   # being written
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        # its result may have come just before it exited
        return os.path.exists(os.path.join(d, STEP_RESULT))
    except OSError:
        pass
    return True


def run_step(argv, until, timeout=None):
    """Waits until UNTIL (epoch seconds, on the monotonic clock), runs ARGV;
    the result reads as ansible.builtin.command's (and vmsnap_snapshot_step's).

    The step is over when its process exits (its output goes to files: a
    helper it leaves behind holding them open does not hold the hosts
    frozen). It runs in a session of its own: with TIMEOUT (seconds), a step
    still running then is stopped with every process of its session
    (SIGTERM, then SIGKILL 5 s later) and fails; so it is when this worker
    is stopped (Ctrl-C, a task timeout: any exception here) or dies."""
    t0 = time.monotonic()
    target = t0 + (until - time.time())
    now = t0
    while now < target:
        time.sleep(min(target - now, 1.0))
        now = time.monotonic()
    start, start_epoch = datetime.datetime.now(), time.time()
    timed_out = False
    with tempfile.TemporaryFile() as out_f, tempfile.TemporaryFile() as err_f:
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f,
                                 start_new_session=True,
                                 preexec_fn=functools.partial(die_with_the_worker, os.getpid()))
        except OSError as exc:
            rc, err_f = 2, None
            err = to_text(exc).encode("utf-8")
        else:
            try:
                try:
                    p.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    stop_session(p, grace=5)
            except BaseException:
                stop_session(p, grace=1)
                raise
            rc = p.returncode
        out_f.seek(0)
        out = out_f.read()
        if err_f is not None:
            err_f.seek(0)
            err = err_f.read()
    end, end_epoch = datetime.datetime.now(), time.time()
    res = dict(cmd=argv, rc=rc, stdout=to_text(out, errors="surrogate_or_replace"),
               stderr=to_text(err, errors="surrogate_or_replace"), changed=True,
               waited=now - t0, start=start.strftime(FMT), end=end.strftime(FMT),
               delta=str(end - start), start_epoch=start_epoch, end_epoch=end_epoch,
               not_before=until)
    if timed_out:
        res.update(failed=True, timed_out=True,
                   msg="the snapshot step did not end within %gs: stopped" % timeout)
        return res
    if rc != 0:
        res.update(failed=True, msg="non-zero return code")
    return res


def refuse_unsynchronised_play(task):
    """A group arms, freezes and is released task by task in step: a play whose
    hosts each run at their own pace (strategy free, host_pinned) would run
    the role's once-only tasks (the instant, the snapshot step) once per host."""
    try:
        strategy = str(task.get_play().strategy or "")
    except AttributeError:   # no play (a task made by hand): nothing to check
        return
    if strategy.endswith(("free", "host_pinned")):
        raise AnsibleActionFail(
            "this play runs with strategy %s, where each host goes at its own pace; a "
            "consistency group moves in step (arm, the snapshot step): use strategy linear "
            "(the default)" % strategy)


def die_with_the_worker(worker):
    """In the snapshot step's process, before it starts: SIGTERM when the
    worker that started it dies. The step has a session of its own (so that
    its timeout stops all of it), and Ansible's workers pass SIGINT and
    SIGTERM (Ctrl-C) to their own process group only."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != worker:   # gone already
        os.kill(os.getpid(), signal.SIGTERM)


def session_members(sid):
    """The pids of the processes in session SID (one that called setsid
    itself has left it)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] == str(sid) and fields[0] != "Z":
            found.append(int(name))
    return found


def stop_session(p, grace):
    """Stops the step P and every process of its session, process groups of
    their own included (coreutils' timeout makes one): SIGTERM, GRACE seconds
    for the step to exit, then SIGKILL to whatever of the session is left,
    and waits (5 s at most) until none is. The session's id, P's pid, is not
    reused while any process of the session is left."""
    sid = p.pid
    for pid in session_members(sid) or [sid]:
        kill_quietly(pid, signal.SIGTERM)
    try:
        p.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + 5
    while True:
        left = session_members(sid)
        if p.returncode is None:
            left.append(sid)
        for pid in left:
            kill_quietly(pid, signal.SIGKILL)
        if p.returncode is None:
            try:
                p.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        if not left or time.monotonic() > deadline:
            return
        time.sleep(0.02)


def kill_quietly(pid, sig):
    try:
        os.kill(pid, sig)
    except OSError:
        pass
