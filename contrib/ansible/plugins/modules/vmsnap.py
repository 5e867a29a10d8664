#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmsnap
short_description: Application-consistent snapshots of a Linux host with vmsnap
version_added: "0.1.0"
description:
  - Wraps the C(vmsnap) command on the managed host and returns its result JSON
    as the module result.
  - C(check), C(run), C(freeze) (with a lease), C(thaw) and C(status) map to the
    command line of the same name.
  - C(freeze) returns the lease's C(session) id; C(thaw) ends that session only
    (C(vmsnap thaw --session)), and fails when the lease had already run out,
    so a caller learns that the guardian thawed before it asked. The id comes
    from the I(session) option or, when not given, from the last C(freeze) of
    this module on the host (kept in I(state_dir)); with neither, C(thaw) thaws
    whatever a crashed run or an earlier C(vmsnap freeze) left frozen.
  - C(begin) and C(end) are a group session for the C(vmsnap.fleet.consistency_group)
    role. C(begin) starts C(vmsnap run) in the background with a snapshot step
    that waits, while frozen, for C(end); it returns once the host is quiesced
    (pre-script done) and frozen, with the wall-clock time it was frozen by.
    C(end) releases the step, waits for the thaw and the post-script and returns
    the run's result, with the wall-clock times that the freeze surely covered.
  - C(arm) is C(begin) without the freeze (C(vmsnap run --freeze-at)); it returns
    once the host is quiesced, synced and waiting (C(armed_at)), with the file
    (C(freeze_at_file)) into which the controller writes C(T LATEST), the instant
    to freeze at on the host's clock and the latest instant a freeze is still of
    use. Told after LATEST, or not told within the lease, the host does not
    freeze, and its run reports C(FsFreezeFailed) with the reason and runs its
    post-script. The role arms every host, then tells each the same instant
    (moved by its clock offset), so the hosts freeze together.
  - With the action plugin, C(end) first releases the step with one shell
    command (no Python started on the host before the thaw), then reads the
    host's clock, then runs the module for the result. C(release) is that
    shell command alone (no clock, no module); the role releases every host
    with it first, so that no host's result collection slows another host's
    release, and collects with C(end) after.
  - C(clock) only measures the host's clock offset (the action plugin, no
    module); the role runs it on a few hosts at a time after arming, for a
    tight bound.
  - The lease is vmsnap's freeze deadline. Whatever happens to the controller or
    the connection, vmsnap thaws the host when it ends, stops the waiting step and
    runs the post-script.
options:
  command:
    description: What to do on the host.
    type: str
    required: true
    choices: [check, run, freeze, thaw, status, begin, arm, release, end, clock]
  vmsnap_bin:
    description: The vmsnap executable on the host.
    type: path
    default: vmsnap
  config:
    description: The configuration file (C(--config)); default is vmsnap's own.
    type: path
  mounts:
    description:
      - Mount points to freeze (C(--mount), repeatable). Without it vmsnap freezes
        every eligible filesystem of the host.
    type: list
    elements: path
  lease:
    description:
      - Seconds after which the host is thawed whatever happens (C(freeze --timeout),
        C(run --freeze-timeout)). Required by C(freeze), C(begin) and C(arm). For
        C(arm), also how long the host waits to be told when to freeze.
    type: float
  snapshot:
    description: For C(command=run), the snapshot command run while frozen (argv).
    type: list
    elements: str
  force:
    description: For C(command=thaw), thaw even the filesystems of a live run.
    type: bool
    default: false
  session:
    description:
      - For C(command=thaw), the session id that C(freeze) returned. Default
        the id of the last C(freeze) of this module on the host, if any.
    type: str
  group:
    description: Name of the group session (C(begin), C(arm), C(release), C(end), C(status)).
    type: str
    default: default
  snapshot_ok:
    description:
      - For C(command=end) and C(command=release), whether the group's snapshot step succeeded. When false,
        the host's own run records C(SnapshotFailed) as well, so its log tells the truth.
    type: bool
    default: true
  step:
    description:
      - For C(release) (with the action plugin), the group's snapshot step
        first, once for the whole play, run on the controller. The first
        host's worker to get there runs it, and the others wait for its
        result. Then each host is released at once, with C(snapshot_ok) set
        from the step's exit status, so that no fan-out of tasks lies
        between the step's end and the hosts' thaws.
      - Keys are C(argv) (the command, a list), C(not_before) (seconds since
        the epoch, the controller's clock), C(dir) (a directory of the
        controller user's, mode 0700, new for each group snapshot; a result
        found there for another C(not_before) is an earlier one's, and the
        hosts are released as failed) and
        C(timeout) (300 s by default; a step still running that long after
        C(not_before) is stopped, every process of its session sent SIGTERM
        and SIGKILL 5 s later, and every host is released as failed; so it is
        when the task's worker is stopped). The step is over when the
        command exits, whatever it leaves running.
      - Refused in a play with strategy C(free) or C(host_pinned), as is
        C(arm), since a group moves in step.
    type: dict
  not_before:
    description:
      - For C(release) and C(end) (with the action plugin), the controller waits
        until this instant (seconds since the epoch, its own clock) before it
        releases the host. The role does not need it (a host the controller
        released after the snapshot step ended thawed after it, whatever the
        clocks say; see C(vmsnap_group_verdict)'s I(released)).
    type: float
    default: 0
  wait_timeout:
    description:
      - For C(begin), seconds to wait for the pre-script and the freeze (C(arm), and
        the arming); for C(end),
        for the thaw and the post-script.
    type: float
    default: 300
  log_file:
    description: The run's log file (C(--log-file)); empty for none.
    type: str
  state_dir:
    description: Where group sessions keep their state (a tmpfs, never a frozen filesystem).
    type: path
    default: /run/vmsnap-fleet
notes:
  - vmsnap freezes filesystems and runs root's scripts, so the task needs root
    on the host (C(become=true) for a user other than root).
  - Check mode is supported. C(check) and C(status) run as usual; C(run) becomes
    C(vmsnap run --dry-run); C(freeze), C(thaw), C(begin), C(arm) and C(end) change nothing
    and report what they would do.
  - Times (C(frozen_at), C(released_at), C(called_at), C(returned_at)) are the host's
    wall clock (seconds since the epoch). The action plugin of this collection adds
    C(clock), the host's offset to the controller's clock with its uncertainty.
  - C(vmsnap freeze) and C(vmsnap thaw) run no pre- or post-script; a consistency
    group uses C(begin)/C(end), which run both.
author:
  - vmsnap developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Validate configuration, permissions and scripts
  vmsnap.fleet.vmsnap:
    command: check

- name: The whole cycle on one host, the snapshot taken by a local command
  vmsnap.fleet.vmsnap:
    command: run
    mounts: [/srv/data]
    lease: 60
    snapshot: [lvcreate, -s, -n, data-snap, -L, 1G, vg0/data]

- name: Quiesce and freeze, held until end or 60 s
  vmsnap.fleet.vmsnap:
    command: begin
    group: nightly
    mounts: [/srv/data]
    lease: 60
  register: vmsnap_begin

- name: Thaw, resume the application, collect the result
  vmsnap.fleet.vmsnap:
    command: end
    group: nightly
    snapshot_ok: "{{ vmsnap_snapshot is succeeded }}"

- name: Freeze under a 30 s lease for a storage-side snapshot
  vmsnap.fleet.vmsnap:
    command: freeze
    mounts: [/srv/data]
    lease: 30
  register: vmsnap_lease

- name: End that lease (fails if it had already run out)
  vmsnap.fleet.vmsnap:
    command: thaw
    session: "{{ vmsnap_lease.session }}"

- name: Thaw whatever a crashed run or a `vmsnap freeze` left frozen
  vmsnap.fleet.vmsnap:
    command: thaw
"""

RETURN = r"""
msg:
  description: What happened, in a sentence.
  returned: always
  type: str
  sample: "vmsnap run: success, application"
rc:
  description: vmsnap's exit status.
  returned: when vmsnap was called (check, run, freeze, thaw, begin when it fails)
  type: int
  sample: 0
stderr:
  description: vmsnap's human-readable report.
  returned: when vmsnap was called (check, run, freeze, thaw, begin when it fails)
  type: str
status:
  description:
    - C(success), C(degraded) or C(failed) (run, begin, end);
      C(frozen) or C(failed) (freeze);
      C(thawed), C(nothing), C(expired), C(unknown), C(refused) or C(failed) (thaw);
      C(absent) (end without a session).
  returned: when vmsnap printed a result
  type: str
  sample: success
consistency:
  description: C(application), C(filesystem), C(crash) or null (run, end).
  returned: when vmsnap printed a run result
  type: str
  sample: application
errors:
  description:
    - vmsnap's errors. For run and end, each with C(code), C(number), C(message)
      and C(action); for freeze, the messages (strings).
  returned: when vmsnap printed a result
  type: list
  elements: raw
vmsnap_warnings:
  description: vmsnap's C(warnings) (renamed, as C(warnings) is Ansible's own key).
  returned: when vmsnap printed a result
  type: list
  elements: str
pre_script:
  description: The pre-script's result (path, ran, attempts, exit_code, signal, timed_out, duration_ms, output, containment), or null.
  returned: run, end
  type: dict
post_script:
  description: The post-script's result, as I(pre_script).
  returned: run, end
  type: dict
freeze:
  description: The freeze of a run (enabled, window_ms, deadline_hit, mounts, rcu_expedited, thawed_early).
  returned: run, end
  type: dict
snapshot:
  description:
    - The snapshot step (argv, program, exit_code, duration_ms, output, signal,
      timed_out, containment), or null. For end, the group session's wait step.
    - For release with I(step), the group's snapshot step as the controller ran
      it, read as C(ansible.builtin.command)'s result (cmd, rc, start, end,
      end_epoch, stdout, stderr), and C(ran_here), whether this host's worker ran it.
  returned: run, end, release
  type: dict
duration_ms:
  description: How long the whole run took, in milliseconds.
  returned: run, end
  type: float
hooks:
  description: Each hook call of the run (hook, action, and a script result).
  returned: run, end
  type: list
  elements: dict
phases:
  description: Each phase of the run (phase, start_ms, duration_ms).
  returned: run, end
  type: list
  elements: dict
plan:
  description: What a run would do, in check mode (a dry run); null otherwise.
  returned: run
  type: dict
ok:
  description: True when C(vmsnap check) found no problem.
  returned: check
  type: bool
config:
  description: The configuration file that was checked.
  returned: check
  type: str
config_found:
  description: Whether that file exists.
  returned: check
  type: bool
problems:
  description: Each problem C(vmsnap check) found (code, number, message, action).
  returned: check
  type: list
  elements: dict
scripts:
  description: The scripts' paths and how they would run (pre, post, pre_runs_as, post_runs_as).
  returned: check
  type: dict
session:
  description:
    - The lease's session id (freeze); pass it to C(thaw) as I(session).
    - For thaw, the session id it ended (or tried to), null for a plain thaw.
  returned: freeze (success), thaw
  type: str
guardian_pid:
  description: The pid of the guardian that holds the freeze and thaws at the lease's end.
  returned: freeze
  type: int
timeout:
  description: The lease, in seconds.
  returned: freeze
  type: float
record:
  description: The freeze record that C(vmsnap thaw) reads.
  returned: freeze
  type: str
mounts:
  description: The filesystems the freeze holds, each with mountpoint, fstype, device, frozen, freeze_ms, error.
  returned: freeze
  type: list
  elements: dict
filesystems:
  description: What C(vmsnap thaw) did with each filesystem (mountpoint, outcome).
  returned: thaw
  type: list
  elements: dict
error:
  description: Why C(vmsnap thaw) refused or failed.
  returned: thaw, when refused
  type: str
called_at:
  description: Host wall clock just before vmsnap was called (freeze, thaw).
  returned: freeze, thaw
  type: float
returned_at:
  description: Host wall clock just after vmsnap returned; for freeze, the filesystems were frozen by then.
  returned: freeze, thaw
  type: float
frozen_at:
  description: Host wall clock by which every filesystem of the group session was frozen.
  returned: begin (success), end
  type: float
released_at:
  description: Host wall clock at which the snapshot step was released; the freeze held until then if C(covered).
  returned: end
  type: float
covered:
  description: True when vmsnap reports the host frozen from C(frozen_at) to C(released_at) without a break.
  returned: end
  type: bool
armed_at:
  description: Host wall clock at which the host was quiesced, synced and waiting to be told when to freeze.
  returned: arm (success)
  type: float
freeze_at_file:
  description: The file on the host into which the controller writes C(T LATEST) (host clock, seconds since the epoch).
  returned: arm (success)
  type: str
told_by:
  description: Host wall clock after which an armed host that was not told when to freeze gives up (and does not freeze).
  returned: arm (success)
  type: float
lease:
  description: The lease, in seconds.
  returned: arm (success)
  type: float
told_at:
  description: Host wall clock at which an armed host read the instant to freeze at (null if never).
  returned: end (of an armed session)
  type: float
freeze_instant:
  description: The instant an armed host was told to freeze at, on its clock (null when told not to, or never).
  returned: end (of an armed session)
  type: float
clock_moved:
  description:
    - An armed host that froze, how far its wall clock moved against its
      monotonic clock from arming to the end of its freeze (seconds; null
      when unknown).
  returned: end (of an armed session)
  type: float
clock_stepped:
  description:
    - Whether C(clock_moved) is more than a slew can do, a clock step, so that
      when the host froze cannot be told from its wall clock (null when unknown).
  returned: end (of an armed session)
  type: bool
release:
  description:
    - The release as the action plugin did it, before anything else (C(state)
      C(released), C(already) or C(absent); C(sent_at), the controller's clock
      just before it sent the release; C(host_time), the host's clock just
      after it; C(rc), C(stderr)); added by the collection's action plugin.
  returned: end, release
  type: dict
lease_deadline:
  description: Host wall clock by which the lease thaws the host at the latest.
  returned: freeze, begin, end
  type: float
host_time:
  description: Host wall clock when the module returned.
  returned: begin, arm, end, status, clock (as a module)
  type: float
pid:
  description: The group session's process on the host (it runs vmsnap).
  returned: begin, arm, end (when it did not finish)
  type: int
sessions:
  description: The group sessions on the host (group, dir, pid, running, frozen_at, released_at, released, lease, started_at, result, lease_deadline, state).
  returned: status
  type: list
  elements: dict
frozen:
  description: The group sessions that hold the host frozen now.
  returned: status
  type: list
  elements: str
clock:
  description:
    - The host's wall-clock offset to the controller's (C(offset), seconds, host
      minus controller) with its C(uncertainty) and C(measured_at); added by
      the collection's action plugin.
  returned: always
  type: dict
"""

import json
import os
import shutil
import stat
import time

from ansible.module_utils.basic import AnsibleModule

# The snapshot step of a group session: note the time (the freeze is complete
# when vmsnap starts it), wait for the release, exit as the group's snapshot
# did. It lives in /run (a tmpfs), never on a frozen filesystem. A run that
# did not freeze (an armed host told too late) has nothing to hold: it ends at
# once. The release comes as a line on a FIFO (the `end` task's one low-level
# command, or the module), so the thaw follows it without polling.
WAITER = r"""
d=$1
[ -n "$VMSNAP_FROZEN_MOUNTS" ] || exit 0
date +%s.%N > "$d/frozen_at.tmp" && mv "$d/frozen_at.tmp" "$d/frozen_at"
[ -z "$VMSNAP_CLOCK_MOVED" ] || printf '%s\n' "$VMSNAP_CLOCK_MOVED" > "$d/clock_moved"
exec 3<>"$d/release.fifo"
while [ ! -e "$d/release" ]; do read -r line <&3 || sleep 0.02; done
date +%s.%N > "$d/released_at.tmp" && mv "$d/released_at.tmp" "$d/released_at"
read verdict < "$d/release"
[ "$verdict" = ok ]
"""

# Starts the group session's vmsnap in a session of its own, detached from
# the connection (setsid -f returns at once); result.json appears (by rename)
# only once vmsnap has finished, then rc (its exit status) beside it.
LAUNCH = r"""
d=$0
exec </dev/null >/dev/null 2>"$d/stderr.log"
nth20() { shift 19; echo "$1"; }
read -r st < /proc/$$/stat
st=${st##*) }
start=$(nth20 $st)
echo "$$ $start" > "$d/pid.tmp" && mv "$d/pid.tmp" "$d/pid"
"$@" > "$d/result.json.part"
rc=$?
mv "$d/result.json.part" "$d/result.json"
echo $rc > "$d/rc.tmp" && mv "$d/rc.tmp" "$d/rc"
"""

BREAK_CODES = ("FsFreezeTimeout", "FsThawedEarly", "FsFreezeFailed", "Interrupted")
LEASE_FILE = "lease-session"   # in state_dir: the session id of the last freeze


def vmsnap_call(module, argv):
    """Runs vmsnap; returns (rc, parsed JSON or None, stderr)."""
    rc, out, err = module.run_command(argv, environ_update={"LC_ALL": "C"})
    try:
        obj = json.loads(out) if out.strip() else None
    except ValueError:
        obj = None
    return rc, obj, err


def base_argv(module, command):
    p = module.params
    argv = [p["vmsnap_bin"], command]
    if p["config"] and command in ("check", "run", "freeze"):
        argv += ["--config", p["config"]]
    if command in ("run", "freeze") and p["mounts"]:
        for m in p["mounts"]:
            argv += ["--mount", m]
    if command == "run" and p["log_file"] is not None:
        argv += ["--log-file", p["log_file"]]
    return argv + ["--json"]


def need_lease(module):
    lease = module.params["lease"]
    if lease is None or not lease > 0:
        module.fail_json(msg="command=%s needs lease > 0 (seconds after which vmsnap thaws "
                             "the host whatever happens)" % module.params["command"])
    return lease


def run_result(module, rc, obj, err, extra=None):
    """The module result from a vmsnap run result."""
    res = dict(obj or {}, rc=rc, stderr=err, **(extra or {}))
    # "warnings" is Ansible's own key: vmsnap's go under vmsnap_warnings
    res["vmsnap_warnings"] = res.pop("warnings", [])
    if obj is None:
        module.fail_json(msg="vmsnap printed no result (exit %d): %s" % (rc, err.strip()[-2000:]),
                         **res)
    return res


def describe_errors(obj):
    return "; ".join("%s (%s): %s" % (e.get("code"), e.get("number"), e.get("message"))
                     for e in (obj or {}).get("errors", []) if isinstance(e, dict))


# -- check / run / freeze / thaw ------------------------------------------------

def do_check(module):
    rc, obj, err = vmsnap_call(module, base_argv(module, "check"))
    res = run_result(module, rc, obj, err)
    if rc != 0:
        module.fail_json(msg="vmsnap check found problems: " + describe_errors(obj), **res)
    module.exit_json(changed=False, msg="configuration, permissions and scripts are all good",
                     **res)


def do_run(module):
    argv = base_argv(module, "run")
    if module.params["lease"] is not None:
        argv += ["--freeze-timeout", str(need_lease(module))]
    if module.check_mode:
        argv.append("--dry-run")
    if module.params["snapshot"]:
        argv += ["--"] + module.params["snapshot"]
    rc, obj, err = vmsnap_call(module, argv)
    res = run_result(module, rc, obj, err)
    msg = "vmsnap run: %s, %s" % (obj.get("status"), obj.get("consistency") or "no snapshot")
    if obj.get("status") == "failed":
        module.fail_json(msg=msg + ": " + describe_errors(obj), changed=True, **res)
    if obj.get("status") == "degraded":
        module.warn(msg + ": " + describe_errors(obj))
    # in check mode (a dry run): what a real run would do, which always changes something
    module.exit_json(changed=True, msg=msg, **res)


def do_freeze(module):
    lease = need_lease(module)
    if module.check_mode:
        module.exit_json(changed=True, msg="would freeze %s for at most %gs"
                         % (", ".join(module.params["mounts"] or ["every eligible filesystem"]),
                            lease))
    argv = base_argv(module, "freeze") + ["--timeout", str(lease)]
    called_at = time.time()
    rc, obj, err = vmsnap_call(module, argv)
    returned_at = time.time()
    # vmsnap freeze --json gives no wall-clock time: the freeze happened
    # between these two readings, and the lease counts from inside them.
    res = run_result(module, rc, obj, err, dict(
        called_at=called_at, returned_at=returned_at,
        lease_deadline=called_at + lease if rc == 0 else None))
    if rc != 0:
        module.fail_json(msg="vmsnap freeze failed, nothing left frozen: %s"
                         % "; ".join(obj.get("errors") or [err.strip()]), **res)
    if res.get("session"):
        remember_lease(module, res["session"])
    module.exit_json(changed=True, msg="frozen until `vmsnap thaw%s` or %gs" % (
        " --session %s" % res["session"] if res.get("session") else "", lease), **res)


def private_dir(path):
    """PATH as a directory of root's that no one else can write: created
    0700 (whatever the umask), or checked when it exists (not a symlink,
    root's, not group/other-writable): the sessions' files live there, and
    freeze_at in it tells the host when to freeze. OSError otherwise."""
    parent = os.path.dirname(path.rstrip("/")) or "/"
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise OSError("state_dir %s is not a directory (a symlink is not followed)" % path)
    if st.st_uid != os.geteuid():
        raise OSError("state_dir %s belongs to uid %d, not to uid %d"
                      % (path, st.st_uid, os.geteuid()))
    if st.st_mode & 0o022:
        raise OSError("state_dir %s is writable by others than its owner (mode %o)"
                      % (path, stat.S_IMODE(st.st_mode)))
    return path


def lease_path(module):
    return os.path.join(module.params["state_dir"], LEASE_FILE)


def remember_lease(module, session):
    """Keeps SESSION for a later thaw without the session option (in /run)."""
    try:
        private_dir(module.params["state_dir"])
        write_atomic(lease_path(module), session + "\n")
    except OSError as exc:
        module.warn("session %s not kept in %s (%s): pass it to thaw as session"
                    % (session, module.params["state_dir"], exc))


def remembered_lease(module):
    try:
        with open(lease_path(module)) as f:
            return f.read().strip() or None
    except OSError:
        return None


def forget_lease(module, session):
    if remembered_lease(module) == session:
        try:
            os.unlink(lease_path(module))
        except OSError:
            pass


def do_thaw(module):
    session = module.params["session"] or remembered_lease(module)
    if module.check_mode:
        module.exit_json(changed=True, session=session, msg="would thaw %s" % (
            "session %s" % session if session else "what vmsnap recorded as frozen"))
    argv = base_argv(module, "thaw")
    if session:
        argv[2:2] = ["--session", session]
    if module.params["force"]:
        argv.insert(2, "--force")
    called_at = time.time()
    rc, obj, err = vmsnap_call(module, argv)
    res = run_result(module, rc, obj, err, dict(called_at=called_at, returned_at=time.time()))
    res["session"] = session
    status = obj.get("status")
    if session and status in ("thawed", "expired", "unknown"):
        forget_lease(module, session)   # ended either way: not to be thawed again
    if status == "expired":
        module.fail_json(msg="session %s: the lease had already run out: the guardian thawed at "
                         "its deadline, before this thaw (what was taken after that was not "
                         "frozen)" % session, **res)
    if status == "unknown":
        module.fail_json(msg="session %s: no such freeze on this host (ended already, or "
                         "never frozen here)" % session, **res)
    if rc != 0:
        module.fail_json(msg="vmsnap thaw failed: " + err.strip(), **res)
    changed = status == "thawed"   # "nothing": already thawed, idempotent
    module.exit_json(changed=changed, msg=("thawed" + (" session %s" % session if session else ""))
                     if changed else "nothing was frozen", **res)


# -- group session: begin / end / status -----------------------------------------

def session_dir(module):
    group = module.params["group"]
    if not group or "/" in group or group.startswith("."):
        module.fail_json(msg="group %r: use a plain name (no '/', not starting with '.')" % group)
    return os.path.join(module.params["state_dir"], group)


def read_float(path):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def starttime(pid):
    """Field 22 of /proc/PID/stat (clock ticks after boot), None if PID is
    gone or a zombie: with the pid, it names one process and no other, ever."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_alive(pid, start):
    """The session's launcher (PID, started at START) still runs: a pid
    alone may name another process by now (not our child: no wait)."""
    if not pid or start is None:
        return False
    return starttime(pid) == start


def read_pid(d):
    """(pid, start time) of the session's launcher, from its pid file
    ("PID START"); (None, None) when there is none or it says less."""
    try:
        with open(os.path.join(d, "pid")) as f:
            words = f.read().split()
        return int(words[0]), int(words[1])
    except (OSError, ValueError, IndexError):
        return None, None


def session_state(d):
    pid, start = read_pid(d)
    result = None
    try:
        with open(os.path.join(d, "result.json")) as f:
            result = json.load(f)
    except (OSError, ValueError):
        pass
    with_lease = read_float(os.path.join(d, "lease"))
    return {"group": os.path.basename(d), "dir": d, "pid": pid,
            "running": pid_alive(pid, start),
            "frozen_at": read_float(os.path.join(d, "frozen_at")),
            "released_at": read_float(os.path.join(d, "released_at")),
            "released": os.path.exists(os.path.join(d, "release")),
            "lease": with_lease, "started_at": read_float(os.path.join(d, "started_at")),
            "result": result}


def lease_deadline(st):
    # the guardian's deadline counts from the freeze, which began after
    # started_at and ended before frozen_at: started_at + lease is a bound
    if st["started_at"] is None or st["lease"] is None:
        return None
    return st["started_at"] + st["lease"]


def write_atomic(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


FREEZE_AT = "freeze_at"   # in the session dir: when to freeze (vmsnap run --freeze-at)


def start_session(module, armed):
    """Starts the group session's vmsnap run in the background (the snapshot
    step waits for the release); ARMED: it freezes only at the instant the
    controller writes into the session's freeze_at file. Returns its dir."""
    lease = need_lease(module)
    d = session_dir(module)
    if os.path.isdir(d):
        st = session_state(d)
        if st["running"] and st["frozen_at"] is not None and not st["released"]:
            module.exit_json(changed=False, msg="group %s: already frozen on this host"
                             % module.params["group"], frozen_at=st["frozen_at"],
                             lease_deadline=lease_deadline(st), pid=st["pid"])
        if st["running"]:
            module.fail_json(msg="group %s: a session is still running here (pid %s); "
                             "end it or wait for its lease" % (module.params["group"], st["pid"]))
    if module.check_mode:
        module.exit_json(changed=True, msg="would run the pre-script and %s %s under a "
                         "%gs lease" % ("arm to freeze" if armed else "freeze",
                                        ", ".join(module.params["mounts"] or ["everything"]),
                                        lease))
    try:
        private_dir(module.params["state_dir"])
    except OSError as exc:
        module.fail_json(msg="cannot use state_dir: %s" % exc)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.mkdir(d, 0o700)
    os.mkfifo(os.path.join(d, "release.fifo"), 0o600)
    argv = base_argv(module, "run") + ["--freeze-timeout", str(lease)]
    if armed:
        argv += ["--freeze-at", os.path.join(d, FREEZE_AT)]
    argv += ["--", "/bin/sh", "-c", WAITER, "vmsnap-group-step", d]
    write_atomic(os.path.join(d, "lease"), repr(lease))
    write_atomic(os.path.join(d, "started_at"), repr(time.time()))
    # its own session: the end of the ssh connection does not reach it
    setsid = module.get_bin_path("setsid", required=True)
    rc, out, err = module.run_command([setsid, "-f", "/bin/sh", "-c", LAUNCH, d] + argv)
    if rc != 0:
        module.fail_json(msg="group %s: could not start vmsnap: %s" % (
            module.params["group"], (err or out).strip()), rc=rc, stderr=err, changed=False)
    return d


def session_failed(module, d, what):
    """vmsnap ended, or did not get far enough in time: fails the task."""
    st = session_state(d)
    ended = os.path.join(d, "rc")
    res = dict(st["result"] or {})
    res["vmsnap_warnings"] = res.pop("warnings", [])
    if not os.path.exists(ended):
        module.fail_json(msg="group %s: not %s after %gs (the pre-script or the freeze is "
                         "still going; its lease ends it)"
                         % (module.params["group"], what, module.params["wait_timeout"]),
                         changed=True, pid=st["pid"], **res)
    # vmsnap ended without reaching the snapshot step: no freeze held here
    with open(os.path.join(d, "stderr.log")) as f:
        err = f.read()
    module.fail_json(msg="group %s: this host did not %s: %s" % (
        module.params["group"], "freeze" if what == "frozen" else "arm",
        describe_errors(res) or err.strip()[-2000:]),
        changed=True, rc=int(read_float(ended) or 1), stderr=err, frozen_at=None, **res)


def wait_session(module, d, mark):
    """Waits for the file MARK of the session (or vmsnap's end); its time or None."""
    limit = time.monotonic() + module.params["wait_timeout"]
    ended = os.path.join(d, "rc")
    while time.monotonic() < limit:
        at = read_float(os.path.join(d, mark))
        if at is not None:
            return at
        if os.path.exists(ended):
            return None
        time.sleep(0.02)
    return None


def do_begin(module):
    d = start_session(module, armed=False)
    if wait_session(module, d, "frozen_at") is None:
        session_failed(module, d, "frozen")
    st = session_state(d)
    module.exit_json(changed=True, msg="quiesced and frozen; the lease thaws it by %.3f"
                     % lease_deadline(st), frozen_at=st["frozen_at"],
                     lease_deadline=lease_deadline(st), pid=st["pid"], host_time=time.time())


def do_arm(module):
    d = start_session(module, armed=True)
    armed_at = wait_session(module, d, FREEZE_AT + ".armed")
    if armed_at is None:
        session_failed(module, d, "armed")
    st = session_state(d)
    lease = module.params["lease"]
    module.exit_json(changed=True, msg="quiesced and armed: it freezes at the instant written "
                     "to %s, or not at all if that does not come within %gs"
                     % (os.path.join(d, FREEZE_AT), lease),
                     armed_at=armed_at, freeze_at_file=os.path.join(d, FREEZE_AT),
                     told_by=armed_at + lease, lease=lease, pid=st["pid"],
                     host_time=time.time())


def wake(d):
    """A line on the session's FIFO: the waiting step reads the release now.
    Opened without blocking: there is no reader when the step is gone."""
    try:
        fd = os.open(os.path.join(d, "release.fifo"), os.O_RDWR | os.O_NONBLOCK)
    except OSError:
        return
    try:
        os.write(fd, b"go\n")
    except OSError:
        pass
    finally:
        os.close(fd)


def told(d):
    """An armed session: when it was told (told_at) and the instant it was
    told to freeze at (freeze_instant, None for "not to"); {} otherwise."""
    if not os.path.exists(os.path.join(d, FREEZE_AT + ".armed")):
        return {}
    told_at = instant = None
    try:   # "TOLD_AT T": when it was told, and the instant it acted on
        with open(os.path.join(d, FREEZE_AT + ".told")) as f:
            words = f.read(4096).split()
        told_at = float(words[0])
        instant = float(words[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"told_at": told_at, "freeze_instant": instant}


def clock_moved(d):
    """An armed session that froze: how far its wall clock moved against the
    monotonic clock from arming to the freeze's end (clock_moved, seconds),
    and whether that is a step (clock_stepped); None each when unknown."""
    try:
        with open(os.path.join(d, "clock_moved")) as f:
            moved, allowed = (float(w) for w in f.read(4096).split()[:2])
    except (OSError, ValueError):
        return {"clock_moved": None, "clock_stepped": None}
    return {"clock_moved": moved, "clock_stepped": abs(moved) > allowed}


def do_end(module):
    d = session_dir(module)
    if not os.path.isdir(d):
        module.exit_json(changed=False, msg="no group session %s on this host"
                         % module.params["group"], status="absent")
    st = session_state(d)
    if module.check_mode:
        module.exit_json(changed=not st["released"], msg="would release the snapshot step")
    changed = False
    if not st["released"] and st["result"] is None:
        # armed, not frozen yet (never told, or told an instant still ahead): not to freeze
        write_atomic(os.path.join(d, FREEZE_AT), "abort the group was released before this "
                     "host froze\n")
        write_atomic(os.path.join(d, "release"), "ok\n" if module.params["snapshot_ok"]
                     else "failed\n")
        wake(d)
        changed = True
    limit = time.monotonic() + module.params["wait_timeout"]
    while st["result"] is None and time.monotonic() < limit:
        time.sleep(0.05)
        st = session_state(d)
    if st["result"] is None:
        module.fail_json(msg="group %s: vmsnap did not finish within %gs (the thaw is "
                         "guaranteed by the lease; the post-script may still be running)"
                         % (module.params["group"], module.params["wait_timeout"]),
                         changed=changed, pid=st["pid"])
    obj = st["result"]
    codes = [e.get("code") for e in obj.get("errors", []) if isinstance(e, dict)]
    freeze = obj.get("freeze") or {}
    # the step ran from frozen_at to released_at; vmsnap says whether the
    # freeze held all that time (no deadline, no early thaw, all frozen)
    covered = (st["frozen_at"] is not None and st["released_at"] is not None
               and not freeze.get("deadline_hit") and not set(codes) & set(BREAK_CODES)
               and bool(freeze.get("mounts"))
               and all(m.get("frozen") and not m.get("error") for m in freeze["mounts"]))
    obj = dict(obj)
    obj["vmsnap_warnings"] = obj.pop("warnings", [])
    res = dict(obj, frozen_at=st["frozen_at"], released_at=st["released_at"], covered=covered,
               lease_deadline=lease_deadline(st), host_time=time.time(),
               **dict(told(d), **clock_moved(d)))
    own_errors = [c for c in codes if not (c == "SnapshotFailed"
                                           and not module.params["snapshot_ok"])]
    msg = "thawed and resumed: %s; the freeze %s the snapshot step" % (
        obj.get("status"), "covered" if covered else "did NOT cover")
    if obj.get("status") == "failed" and own_errors:
        module.fail_json(msg=msg + ": " + describe_errors(obj), changed=changed, **res)
    module.exit_json(changed=changed, msg=msg, **res)


def do_release(module):
    """The release alone (the action plugin does it in one shell command)."""
    d = session_dir(module)
    if not os.path.isdir(d):
        module.exit_json(changed=False, msg="release: absent", release={"state": "absent"})
    st = session_state(d)
    if st["released"] or st["result"] is not None:
        module.exit_json(changed=False, msg="release: already", release={"state": "already"})
    if module.check_mode:
        module.exit_json(changed=True, msg="would release the snapshot step")
    # armed, not frozen yet (never told, or told an instant still ahead): not to freeze
    write_atomic(os.path.join(d, FREEZE_AT), "abort the group was released before this "
                 "host froze\n")
    write_atomic(os.path.join(d, "release"), "ok\n" if module.params["snapshot_ok"]
                 else "failed\n")
    wake(d)
    module.exit_json(changed=True, msg="release: released",
                     release={"state": "released", "host_time": time.time()})


def do_clock(module):
    """Run as a module (the action plugin measures and does not call it): the host's clock."""
    module.exit_json(changed=False, host_time=time.time())


def do_status(module):
    root = module.params["state_dir"]
    sessions = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if os.path.isdir(os.path.join(root, name)):
                st = session_state(os.path.join(root, name))
                st["lease_deadline"] = lease_deadline(st)
                st["state"] = ("frozen" if st["running"] and st["frozen_at"] is not None
                               and not st["released"] else
                               "running" if st["running"] else "finished")
                sessions.append(st)
    module.exit_json(changed=False, sessions=sessions, host_time=time.time(),
                     frozen=[s["group"] for s in sessions if s["state"] == "frozen"])


def main():
    module = AnsibleModule(
        argument_spec=dict(
            command=dict(type="str", required=True,
                         choices=["check", "run", "freeze", "thaw", "status", "begin", "arm", "release",
                                  "end", "clock"]),
            vmsnap_bin=dict(type="path", default="vmsnap"),
            config=dict(type="path"),
            mounts=dict(type="list", elements="path"),
            lease=dict(type="float"),
            snapshot=dict(type="list", elements="str"),
            force=dict(type="bool", default=False),
            session=dict(type="str"),
            group=dict(type="str", default="default"),
            snapshot_ok=dict(type="bool", default=True),
            not_before=dict(type="float", default=0),
            step=dict(type="dict"),
            wait_timeout=dict(type="float", default=300),
            log_file=dict(type="str"),
            state_dir=dict(type="path", default="/run/vmsnap-fleet"),
        ),
        supports_check_mode=True,
    )
    handlers = {"check": do_check, "run": do_run, "freeze": do_freeze, "thaw": do_thaw,
                "status": do_status, "begin": do_begin, "arm": do_arm, "release": do_release,
                "end": do_end, "clock": do_clock}
    vmsnap_bin = module.params["vmsnap_bin"]
    if module.params["command"] not in ("status", "clock") and shutil.which(vmsnap_bin) is None:
        module.fail_json(msg="vmsnap not found on the host: %s (install it, or set vmsnap_bin)"
                         % vmsnap_bin)
    handlers[module.params["command"]](module)


if __name__ == "__main__":
    main()
