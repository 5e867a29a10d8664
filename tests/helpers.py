"""Helpers for framework tests: root-owned scripts and configs, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def write_script(path: str | os.PathLike[str], body: str, mode: int = 0o700,
                 shebang: str | None = "#!/bin/sh") -> str:
    path = str(path)
    with open(path, "w") as f:
        f.write("%s\n%s\n" % (shebang, body) if shebang else body + "\n")
    os.chmod(path, mode)
    return path


def write_config(path: str | os.PathLike[str], mode: int = 0o600, **fields: Any) -> str:
    path = str(path)
    with open(path, "w") as f:
        json.dump(fields, f)
    os.chmod(path, mode)
    return path


def setup_scripts(tmp_path: Path, pre: str = "exit 0", post: str = "exit 0",
                  **fields: Any) -> str:
    """A config with a pre- and a post-script in TMP_PATH/etc (all root, 700/600)."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    os.chmod(etc, 0o755)
    pre_path = write_script(etc / "pre.sh", pre)
    post_path = write_script(etc / "post.sh", post)
    cfg: dict[str, Any] = {
        "pluginName": "ScriptRunner", "preScriptLocation": pre_path,
        "postScriptLocation": post_path, "preScriptParams": [], "postScriptParams": [],
        "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0, "timeoutInSeconds": 10,
        "continueBackupOnFailure": True, "fsFreezeEnabled": True,
        "hooksDirectory": str(tmp_path / "no-hooks")}
    cfg.update(fields)
    return write_config(etc / "config.json", **cfg)


def vmsnap(*args: str, timeout: float = 120, env: Mapping[str, str] | None = None,
           input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `python -m vmsnap_native ARGS`; returns CompletedProcess (text)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "vmsnap_native", *args], capture_output=True,
                          text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)


def run_json(tmp_path: str | os.PathLike[str], config: str | os.PathLike[str] | None,
             mounts: Iterable[str], snapshot: Sequence[str] = (), extra: Iterable[str] = (),
             env: Mapping[str, str] | None = None, timeout: float = 120
             ) -> tuple[int, Any, subprocess.CompletedProcess[str]]:
    """`vmsnap run --json` with an explicit mount list; returns (exit status, result dict, proc)."""
    args = ["run", "--json", "--log-file", os.path.join(str(tmp_path), "vmsnap.log")]
    if config is not None:
        args += ["--config", str(config)]
    for m in mounts:
        args += ["--mount", m]
    args += list(extra)
    if snapshot:
        args += ["--", *snapshot]
    p = vmsnap(*args, env=env, timeout=timeout)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        raise AssertionError("stdout is not one JSON object:\n%s\nstderr:\n%s"
                             % (p.stdout, p.stderr)) from None
    return p.returncode, res, p


def codes(res: Mapping[str, Any]) -> list[str]:
    return [e["code"] for e in res["errors"]]


def outliving_step(tmp_path: str | os.PathLike[str], mount: str) -> str:
    """A snapshot step (sh -c) that outlives the freeze deadline: it notes
    when SIGTERM came (TMP/term) and beats every 20 ms (TMP/beats) until the
    SIGKILL.  Inside the freeze window it starts a writer to MOUNT that blocks
    while MOUNT is frozen and notes when its write went through
    (TMP/probe-done): the moment of the thaw, seen from the step's side."""
    return ("trap 'date +%%s.%%N >> %(t)s/term' TERM; echo $$ > %(t)s/pid; "
            "(trap '' TERM; echo x > %(m)s/.thaw-probe && date +%%s.%%N > %(t)s/probe-done) & "
            "while :; do date +%%s.%%N >> %(t)s/beats; sleep 0.02; done"
            % {"t": tmp_path, "m": mount})


def thawed_while_the_step_ran(tmp_path: str | os.PathLike[str]) -> float:
    """For outliving_step: asserts the write to the frozen filesystem went
    through while the step was still running (the guardian thawed at the
    deadline, not once the controller had stopped the step); returns how
    long before the step's last beat it did."""
    done = os.path.join(str(tmp_path), "probe-done")
    with open(os.path.join(str(tmp_path), "beats")) as f:
        last_beat = float(f.read().split()[-1])
    assert os.path.exists(done), \
        "the filesystem was still frozen when the step was killed (no write went through)"
    with open(done) as f:
        thawed_at = float(f.read().split()[0])
    assert thawed_at < last_beat, \
        "thawed %.2f s after the step's last beat: not at the deadline" % (thawed_at - last_beat)
    return last_beat - thawed_at


def frozen_or_thawed(mount: str) -> str:
    """Shell words that print `frozen` or `thawed`, what the kernel says of MOUNT
    now (FIFREEZE on a frozen filesystem fails with EBUSY; a thawed one is
    frozen and thawed again at once).  For scripts and steps of a run."""
    return ("$(if fsfreeze -f %s 2>/dev/null; then fsfreeze -u %s; echo thawed; "
            "else echo frozen; fi)" % (mount, mount))


def guardian_of(pid: int) -> int:
    """The pid of the freeze guardian among the descendants of PID."""
    return helper_below(pid, "vmsnap-guardian")


def helper_below(pid: int, comm: str) -> int:
    """The pid of the first process named COMM among the descendants of PID."""
    from .conftest import descendants
    for child in descendants(pid):
        try:
            with open("/proc/%d/comm" % child) as f:
                if f.read().strip() == comm:
                    return int(child)
        except OSError:
            pass
    raise AssertionError("no %s below pid %d" % (comm, pid))


FIFREEZE = 0xC0045877


def in_fifreeze(pid: int) -> bool:
    """A thread of PID is inside FIFREEZE now (its /proc syscall line shows
    the ioctl's request argument)."""
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return False
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/syscall" % (pid, tid)) as f:
                fields = f.read().split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2].startswith("0x") and int(fields[2], 16) == FIFREEZE:
            return True
    return False


def pin_freeze(mount: str) -> subprocess.Popen[bytes]:
    """Holds the next FIFREEZE of MOUNT in the kernel: a splice from an
    empty pipe into a file of MOUNT waits for data inside the kernel's
    write section, and a freeze waits for every writer to leave it.  Write
    a byte to the process's stdin (and close it) to let go; it has entered
    the splice's file once it printed a line."""
    p = subprocess.Popen(
        [sys.executable, "-c", "import os, sys\n"
         "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o600)\n"
         "print('in', flush=True)\n"
         "os.splice(0, fd, 65536)\n", os.path.join(mount, "pinned")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"in\n"
    return p


def unpin_freeze(p: subprocess.Popen[bytes]) -> None:
    """Lets the writer of pin_freeze() go (the held FIFREEZE proceeds)."""
    if p.poll() is None and p.stdin is not None and not p.stdin.closed:
        p.stdin.write(b"x")
        p.stdin.close()
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
