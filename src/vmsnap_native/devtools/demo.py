"""``vmsnap demo``: the whole cycle on a sandbox, proved on the restored copy.

Builds an ext4 filesystem on a loop device, starts an application writing
continuously to an SQLite database on it, writes a configuration and
root-owned pre/post scripts (the pre-script makes the application commit
and pause and confirms it; the post-script resumes it), runs the cycle with
a snapshot step that copies the disk image, mounts the copy read-only and
checks the database: integrity_check, and the row count equals the count the
application reported when it paused.  Then cleans everything up.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any

from ..cycle import run
from ..result import Result
from .loopfs import LoopError, LoopFilesystems
from .loopfs import available as loopfs_available

IMAGE_MB = 64

PRE_SCRIPT = """#!/bin/sh
# Ask the demo application to commit and pause; confirm it did.
ctl="$1"
kill -USR1 "$(cat "$ctl/app.pid")" || exit 1
i=0
while [ $i -lt 500 ]; do
    case "$(cat "$ctl/app.status" 2>/dev/null)" in
        paused*) echo "application $(cat "$ctl/app.status") rows, all committed"; exit 0 ;;
    esac
    sleep 0.01; i=$((i+1))
done
echo "the application did not confirm the pause"
exit 1
"""

POST_SCRIPT = """#!/bin/sh
# Let the demo application resume.
ctl="$1"
kill -USR2 "$(cat "$ctl/app.pid")" || exit 1
i=0
while [ $i -lt 500 ]; do
    case "$(cat "$ctl/app.status" 2>/dev/null)" in
        running*) echo "application resumed"; exit 0 ;;
    esac
    sleep 0.01; i=$((i+1))
done
echo "the application did not resume"
exit 1
"""


class DemoError(Exception):
    pass


def _sh(*argv: str) -> str:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if p.returncode != 0:
        raise DemoError("%s failed: %s" % (" ".join(argv), p.stdout.strip()))
    return p.stdout


def requirements() -> str | None:
    """What is missing to run the demo here, or None."""
    why = loopfs_available("ext4")
    return "vmsnap demo %s" % why if why else None


class Sandbox:
    def __init__(self, keep: bool) -> None:
        self.keep = keep
        self.dir = tempfile.mkdtemp(prefix="vmsnap-demo-")
        os.chmod(self.dir, 0o700)
        self.copy = os.path.join(self.dir, "snapshot.img")
        self.ctl = os.path.join(self.dir, "control")
        self.etc = os.path.join(self.dir, "etc")
        self.fs = LoopFilesystems(self.dir)
        self.app: subprocess.Popen[bytes] | None = None

    def build(self) -> None:
        for d in (self.ctl, self.etc):
            os.makedirs(d, mode=0o700)
        (self.data,) = self.fs.make(1, size_mb=IMAGE_MB)
        self.image = self.fs.image_of(self.data)
        self.loopdev = _sh("findmnt", "-n", "-o", "SOURCE", self.data).strip() \
            if shutil.which("findmnt") else "loop"

    def write_config(self) -> None:
        pre = os.path.join(self.etc, "pre.sh")
        post = os.path.join(self.etc, "post.sh")
        for path, body in ((pre, PRE_SCRIPT), (post, POST_SCRIPT)):
            with open(path, "w") as f:
                f.write(body)
            os.chmod(path, 0o700)
        cfg = {"pluginName": "ScriptRunner", "preScriptLocation": pre,
               "postScriptLocation": post, "preScriptParams": [self.ctl],
               "postScriptParams": [self.ctl], "preScriptNoOfRetries": 0,
               "postScriptNoOfRetries": 0, "timeoutInSeconds": 10,
               "continueBackupOnFailure": True, "fsFreezeEnabled": True,
               "freezeTimeoutInSeconds": 30, "hooksDirectory": os.path.join(self.etc, "hooks.d")}
        self.config = os.path.join(self.etc, "VMSnapshotScriptPluginConfig.json")
        with open(self.config, "w") as f:
            json.dump(cfg, f, indent=2)
        os.chmod(self.config, 0o600)

    def start_app(self) -> None:
        self.db = os.path.join(self.data, "app.db")
        self.app = subprocess.Popen([sys.executable, "-m", "vmsnap_native.devtools.demo_app", self.db,
                                     self.ctl], stdin=subprocess.DEVNULL)
        status = os.path.join(self.ctl, "app.status")
        for _ in range(500):
            if os.path.exists(status):
                break
            time.sleep(0.01)
        else:
            raise DemoError("the sample application did not start")
        time.sleep(0.5)   # let it write for a while

    def app_status(self) -> str:
        with open(os.path.join(self.ctl, "app.status")) as f:
            return f.read().strip()

    def verify(self, paused_rows: int) -> dict[str, Any]:
        self.restored = self.fs.attach(self.copy, "ro,loop,noload")
        uri = "file:%s?mode=ro&immutable=1" % os.path.join(self.restored, "app.db")
        conn = sqlite3.connect(uri, uri=True)
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()
        return {"integrity": integrity, "rows": rows, "paused_rows": paused_rows,
                "ok": integrity == "ok" and rows == paused_rows}

    def cleanup(self) -> None:
        if self.app is not None and self.app.poll() is None:
            self.app.terminate()
            try:
                self.app.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.app.kill()
                self.app.wait()
        self.fs.teardown()
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)


def timeline(res: Result) -> list[str]:
    notes: dict[str, list[str]] = {}
    if res.pre_script is not None:
        notes["pre-script"] = res.pre_script.output.strip().splitlines()[-1:] or [""]
    if res.post_script is not None:
        notes["post-script"] = res.post_script.output.strip().splitlines()[-1:] or [""]
    if res.snapshot is not None:
        notes["snapshot"] = [" ".join(os.path.basename(a) for a in res.snapshot.argv)]
    lines = ["  %10s  %-13s %10s" % ("at", "phase", "took")]
    for ph in res.phases:
        note = (notes.get(ph["phase"]) or [""])[0]
        lines.append("  %+8.1f ms  %-13s %7.1f ms   %s" % (ph["start_ms"], ph["phase"],
                                                          ph["duration_ms"], note))
    return lines


def main(keep: bool = False, json_out: bool = False) -> int:
    missing = requirements()
    if missing:
        print("vmsnap demo: %s" % missing, file=sys.stderr)
        return 1
    out = sys.stderr if json_out else sys.stdout
    box = Sandbox(keep)
    report: dict[str, Any] = {"sandbox": box.dir, "ok": False}

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    try:
        say("vmsnap demo: sandbox %s" % box.dir)
        box.build()
        say("  [setup]   ext4 filesystem on %s (%d MiB) mounted at %s" % (box.loopdev, IMAGE_MB,
                                                                        box.data))
        box.write_config()
        say("  [setup]   configuration %s, pre/post scripts in %s (root, 700)"
            % (box.config, box.etc))
        box.start_app()
        say("  [app]     writing to %s (SQLite): %s rows so far" % (box.db, box.app_status().split()[1]))
        say("  [run]     pre-script -> freeze -> snapshot (copy the disk image) -> thaw -> post-script")
        res = run(config=box.config, snapshot=["cp", "--sparse=always", box.image, box.copy],
                  mounts=[box.data], log_file=os.path.join(box.dir, "vmsnap.log"))
        report["result"] = res.to_dict()
        for line in timeline(res):
            say(line)
        say("  freeze window %.2f ms, consistency: %s, status: %s" % (
            res.freeze.window_ms or 0.0, res.consistency, res.status))
        for e in res.errors:
            say("  error %s (%d): %s -> %s" % (e.code, e.number, e.message, e.action))
        if res.status == "failed":
            raise DemoError("the run failed")
        paused = int(res.pre_script.output.split("paused ")[1].split()[0]) \
            if res.pre_script and "paused " in res.pre_script.output else -1
        check = box.verify(paused)
        report["verify"] = check
        say("  [verify]  snapshot mounted read-only: integrity_check %s; %d rows in the copy, "
            "%d reported by the application at the pause -> %s"
            % (check["integrity"], check["rows"], check["paused_rows"],
               "consistent" if check["ok"] else "MISMATCH"))
        time.sleep(0.2)
        say("  [app]     still running after the snapshot: %s rows" % box.app_status().split()[1])
        report["ok"] = check["ok"] and res.consistency == "application"
    except (DemoError, LoopError, OSError, sqlite3.Error) as exc:
        say("vmsnap demo: %s" % exc)
        report["error"] = str(exc)
    finally:
        box.cleanup()
        say("  [cleanup] %s" % ("kept the sandbox at %s (image, copy, log)" % box.dir if keep
                               else "unmounted, loop devices released, sandbox removed"))
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    say("vmsnap demo: %s" % ("OK: the restored copy is application-consistent" if report["ok"]
                             else "FAILED"))
    return 0 if report["ok"] else 1
