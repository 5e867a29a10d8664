"""The cycle through the CLI, on real loop filesystems and real scripts:
every row of the SPEC §5 decision table, every error code, retries,
timeouts, params, the snapshot step, the freeze deadline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from .conftest import frozen_state, root_only
from .helpers import (
    codes,
    frozen_or_thawed,
    outliving_step,
    run_json,
    setup_scripts,
    thawed_while_the_step_ran,
    vmsnap,
    write_config,
    write_script,
)

pytestmark = root_only

ERROR_NUMBERS = {
    "Pre-ScriptExecutionFailed": 300, "Post-ScriptExecutionFailed": 301,
    "Pre-ScriptNotFound": 302, "Post-ScriptNotFound": 303, "IncorrectPluginhostFile": 304,
    "IncorrectJSONConfigFile": 305, "InsufficientPermissionforPre-Script": 306,
    "InsufficientPermissionforPost-Script": 307, "Pre-ScriptTimeout": 308,
    "Post-ScriptTimeout": 309, "InsufficientPermissionforJSONConfigFile": 317,
    "FsFreezeFailed": 121, "FsFreezeTimeout": 122, "UnableToOpenMount": 123,
    "FsThawedEarly": 124, "SnapshotFailed": 400, "AnotherRunInProgress": 401, "Interrupted": 402,
}


def check_errors(res):
    for e in res["errors"]:
        if e["code"] in ERROR_NUMBERS:
            assert e["number"] == ERROR_NUMBERS[e["code"]], e
        assert e["message"] and e["action"], e


def marker(tmp_path, name):
    return "touch %s/%s" % (tmp_path, name)


# -- the decision table ------------------------------------------------------------

def test_success_is_application_consistent(tmp_path, loopfs):
    mounts = loopfs.make(2)
    cfg = setup_scripts(tmp_path, pre=marker(tmp_path, "pre-ran"), post=marker(tmp_path, "post-ran"))
    rc, res, p = run_json(tmp_path, cfg, mounts)
    assert rc == 0, p.stderr
    assert res["status"] == "success" and res["consistency"] == "application"
    assert res["errors"] == []
    assert (tmp_path / "pre-ran").exists() and (tmp_path / "post-ran").exists()
    assert res["freeze"]["window_ms"] > 0
    assert sorted(m["mountpoint"] for m in res["freeze"]["mounts"]) == sorted(mounts)
    assert all(m["frozen"] for m in res["freeze"]["mounts"])
    assert res["pre_script"]["ran"] and res["pre_script"]["attempts"] == 1
    assert res["snapshot"] == {"argv": [], "exit_code": 0, "duration_ms": 0.0, "output": "",
                               "signal": None, "timed_out": False, "containment": None, "program": None}
    assert "application-consistent" in p.stderr and "freeze window" in p.stderr
    assert not any(frozen_state(m) for m in mounts)


def test_no_config_file_is_filesystem_consistent_success(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    rc, res, _ = run_json(tmp_path, tmp_path / "absent.json", [m])
    assert rc == 0 and res["status"] == "success" and res["consistency"] == "filesystem"
    assert res["pre_script"] is None and any("no configuration file" in w for w in res["warnings"])


def test_missing_pre_script_and_no_freeze_is_crash_degraded(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = write_config(tmp_path / "c.json", preScriptLocation=str(tmp_path / "absent-pre"),
                       postScriptLocation=str(tmp_path / "absent-post"), fsFreezeEnabled=False)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    # the pre-script is missing (302): nothing was quiesced
    assert res["consistency"] == "crash" and res["status"] == "degraded" and rc == 3
    assert codes(res) == ["Pre-ScriptNotFound"]
    assert res["freeze"]["enabled"] is False and res["freeze"]["mounts"] == []


def test_invalid_config_is_305_filesystem_degraded(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = tmp_path / "c.json"
    cfg.write_text('{"preScriptLocation": 5}')
    os.chmod(cfg, 0o600)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 3 and res["status"] == "degraded" and res["consistency"] == "filesystem"
    assert codes(res) == ["IncorrectJSONConfigFile"]
    assert "preScriptLocation must be a string" in res["errors"][0]["message"]
    check_errors(res)


def test_badly_permitted_config_is_317_and_scripts_skipped(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre=marker(tmp_path, "pre-ran"))
    os.chmod(cfg, 0o644)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 3 and res["consistency"] == "filesystem"
    assert codes(res) == ["InsufficientPermissionforJSONConfigFile"]
    assert not (tmp_path / "pre-ran").exists()
    check_errors(res)


def test_pre_failure_continue_true(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo broken; exit 4", post=marker(tmp_path, "post-ran"))
    rc, res, p = run_json(tmp_path, cfg, [m])
    assert rc == 3 and res["status"] == "degraded" and res["consistency"] == "filesystem"
    assert codes(res) == ["Pre-ScriptExecutionFailed"]
    assert res["pre_script"]["exit_code"] == 4 and "broken" in res["pre_script"]["output"]
    assert (tmp_path / "post-ran").exists(), "post-script must run when the pre-script ran"
    assert "read the script's output" in p.stderr


def test_pre_failure_continue_false_several_disks_fails(tmp_path, loopfs):
    mounts = loopfs.make(2)
    cfg = setup_scripts(tmp_path, pre="exit 1", post=marker(tmp_path, "post-ran"),
                        continueBackupOnFailure=False)
    rc, res, _ = run_json(tmp_path, cfg, mounts, snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None
    assert res["snapshot"] is None and not (tmp_path / "snap").exists()
    assert res["freeze"]["mounts"] == []
    assert (tmp_path / "post-ran").exists()


def test_pre_failure_continue_false_one_disk_snapshots_anyway(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="exit 1", continueBackupOnFailure=False)
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 3 and res["status"] == "degraded" and res["consistency"] == "filesystem"
    assert (tmp_path / "snap").exists()


def test_missing_pre_script_does_not_run_post(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post=marker(tmp_path, "post-ran"))
    os.unlink(tmp_path / "etc" / "pre.sh")
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Pre-ScriptNotFound"] and rc == 3
    assert res["pre_script"]["ran"] is False
    assert not (tmp_path / "post-ran").exists()


def test_a_selected_path_that_is_no_mount_point_is_123_and_fails(tmp_path, loopfs):
    # found before anything runs: no snapshot (tests/test_selection.py has the rest)
    (m,) = loopfs.make(1)
    rc, res, _ = run_json(tmp_path, tmp_path / "absent.json", [m, str(tmp_path)])
    assert codes(res) == ["UnableToOpenMount"] and str(tmp_path) in res["errors"][0]["message"]
    assert res["consistency"] is None and res["status"] == "failed" and rc == 1
    assert not frozen_state(m)


def test_unopenable_mount_continue_false_several_disks_fails(tmp_path, loopfs):
    (a, b) = loopfs.make(2)
    cfg = setup_scripts(tmp_path, continueBackupOnFailure=False)
    rc, res, _ = run_json(tmp_path, cfg, [a, b, str(tmp_path)],
                          snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 1 and res["status"] == "failed" and not (tmp_path / "snap").exists()


def test_snapshot_failure_is_400_and_post_runs(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post=marker(tmp_path, "post-ran"))
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["sh", "-c", "echo nope; exit 9"])
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None
    assert codes(res) == ["SnapshotFailed"] and res["snapshot"]["exit_code"] == 9
    assert "nope" in res["snapshot"]["output"]
    assert (tmp_path / "post-ran").exists() and not frozen_state(m)
    check_errors(res)


def test_snapshot_not_executable_is_400(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    rc, res, _ = run_json(tmp_path, None, [m], snapshot=[str(tmp_path / "no-such-tool")],
                          env={"VMSNAP_CONFIG": str(tmp_path / "absent")})
    assert rc == 1 and codes(res) == ["SnapshotFailed"] and res["snapshot"]["exit_code"] == 127


@pytest.mark.parametrize("cont,status,rc", [(True, "degraded", 3), (False, "failed", 1)])
def test_post_failure(tmp_path, loopfs, cont, status, rc):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="exit 2", continueBackupOnFailure=cont)
    got_rc, res, _ = run_json(tmp_path, cfg, [m])
    assert got_rc == rc and res["status"] == status
    assert res["consistency"] == "application"   # the snapshot stands
    assert codes(res) == ["Post-ScriptExecutionFailed"]
    check_errors(res)


def test_post_timeout_and_missing_post(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="sleep 30", timeoutInSeconds=0.5)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Post-ScriptTimeout"] and rc == 3
    os.unlink(tmp_path / "etc" / "post.sh")
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Post-ScriptNotFound"]
    check_errors(res)


def test_script_permission_errors_306_307(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre=marker(tmp_path, "pre-ran"))
    os.chmod(tmp_path / "etc" / "pre.sh", 0o755)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"]
    assert not (tmp_path / "pre-ran").exists() and res["consistency"] == "filesystem"
    os.chmod(tmp_path / "etc" / "pre.sh", 0o700)
    os.chown(tmp_path / "etc" / "post.sh", 65534, 65534)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["InsufficientPermissionforPost-Script"]
    # the post-script cannot run, so the pre-script did not either (issue 11 item 3)
    assert not (tmp_path / "pre-ran").exists()
    assert res["consistency"] == "filesystem" and rc == 3
    check_errors(res)


def test_freeze_deadline_during_snapshot_is_122(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post=marker(tmp_path, "post-ran"))
    t0 = time.monotonic()
    # the step ignores SIGTERM and runs on past the deadline: the guardian thaws
    # at the deadline, while it still runs, not once the controller has stopped it
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["sh", "-c", outliving_step(tmp_path, m)],
                          extra=["--freeze-timeout", "1"])
    assert time.monotonic() - t0 < 10
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None
    assert "FsFreezeTimeout" in codes(res)
    assert res["freeze"]["deadline_hit"] is True and res["snapshot"]["timed_out"] is True
    assert thawed_while_the_step_ran(tmp_path) > 0.5
    assert (tmp_path / "post-ran").exists()
    assert not frozen_state(m)
    check_errors(res)


# -- scripts: retries, timeouts, params, shebang, sh -------------------------------------

def counter_script(tmp_path, fail_times):
    return ('n=$(cat %(c)s 2>/dev/null || echo 0); n=$((n+1)); echo $n > %(c)s; '
            '[ $n -gt %(f)d ] || { echo "attempt $n fails"; exit 1; }'
            % {"c": tmp_path / "count", "f": fail_times})


@pytest.mark.parametrize("retries,ok,attempts", [(2, True, 3), (1, False, 2)])
def test_retries_really_rerun(tmp_path, loopfs, retries, ok, attempts):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre=counter_script(tmp_path, 2), preScriptNoOfRetries=retries)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert res["pre_script"]["attempts"] == attempts
    assert int((tmp_path / "count").read_text()) == attempts
    assert (res["consistency"] == "application") is ok
    assert (codes(res) == []) is ok


def test_pre_timeout_kills_group_per_attempt(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pids = tmp_path / "pids"
    cfg = setup_scripts(tmp_path, pre="sh -c 'trap \"\" TERM; echo $$ >> %s; sleep 60' & "
                        "echo $$ >> %s; sleep 60" % (pids, pids),
                        timeoutInSeconds=0.5, preScriptNoOfRetries=1)
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert time.monotonic() - t0 < 15
    assert codes(res) == ["Pre-ScriptTimeout"] and res["pre_script"]["attempts"] == 2
    assert res["pre_script"]["timed_out"] is True
    for pid in map(int, pids.read_text().split()):
        assert not os.path.exists("/proc/%d" % pid) or \
            open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0] in "ZX"
    check_errors(res)


def test_params_arrive_as_separate_arguments(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    out = tmp_path / "args"
    cfg = setup_scripts(tmp_path, pre='for a in "$@"; do echo "[$a]" >> %s; done; echo "0=$0" >> %s'
                        % (out, out), preScriptParams=["one two", "", "$HOME", "a'b"])
    run_json(tmp_path, cfg, [m])
    assert out.read_text().splitlines() == ["[one two]", "[]", "[$HOME]", "[a'b]",
                                            "0=%s" % (tmp_path / "etc" / "pre.sh")]


def test_600_script_runs_through_sh_and_700_honours_shebang(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    pre = tmp_path / "etc" / "pre.sh"
    write_script(pre, "import sys; open(%r, 'w').write('python')" % str(tmp_path / "who"),
                 shebang="#!%s" % sys.executable)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert (tmp_path / "who").read_text() == "python" and rc == 0
    write_script(pre, "echo $0 > %s" % (tmp_path / "who"), mode=0o600, shebang=None)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 0 and (tmp_path / "who").read_text().strip() == str(pre)


def test_script_environment_is_clean(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="env > %s" % (tmp_path / "env"))
    run_json(tmp_path, cfg, [m], env={"LD_PRELOAD": "/x.so", "PYTHONPATH": "/evil",
                                      "PATH": "/evil:" + os.environ["PATH"]})
    env = (tmp_path / "env").read_text()
    assert "LD_PRELOAD" not in env and "PYTHONPATH" not in env and "/evil" not in env
    assert "VMSNAP_PHASE=pre" in env


def test_background_process_of_successful_pre_script_is_left_alone(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    pid_file = tmp_path / "bg"
    cfg = setup_scripts(tmp_path, pre="sleep 30 & echo $! > %s; echo started" % pid_file,
                        post="kill $(cat %s)" % pid_file)
    t0 = time.monotonic()
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["sh", "-c", "kill -0 $(cat %s)" % pid_file])
    assert rc == 0 and time.monotonic() - t0 < 10, res
    assert res["snapshot"]["exit_code"] == 0   # the background process was alive during the snapshot


# -- the snapshot step -------------------------------------------------------------

def test_snapshot_runs_while_frozen_and_sees_writes_blocked(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    # a writer in the background: while frozen it stays blocked (unkillable, in D state)
    probe = ("sh -c 'echo x > %s/f' & sleep 0.5; kill -0 $! && echo writer-blocked; "
             "echo \"$VMSNAP_FROZEN_MOUNTS\"" % m)
    rc, res, _ = run_json(tmp_path, None, [m], snapshot=["sh", "-c", probe],
                          env={"VMSNAP_CONFIG": str(tmp_path / "absent")})
    assert rc == 0
    assert "writer-blocked" in res["snapshot"]["output"], res["snapshot"]
    assert m in res["snapshot"]["output"]


def test_log_file_on_the_frozen_filesystem_does_not_deadlock(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo pre-output-marker")
    log = os.path.join(m, "vmsnap.log")
    p = vmsnap("run", "--json", "--config", cfg, "--mount", m, "--log-file", log, "--",
               "sh", "-c", "echo snapshot-output-marker", timeout=60)
    assert p.returncode == 0, p.stderr
    text = open(log).read()
    assert "pre-output-marker" in text and "result: status success" in text
    assert "snapshot" in text


def test_json_stdout_is_only_the_result(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo to-stdout; echo to-stderr >&2")
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["echo", "snapshot says hi"])
    json.loads(p.stdout)   # the whole of stdout is one object
    assert set(res) >= {"status", "consistency", "errors", "warnings", "pre_script",
                        "post_script", "freeze", "snapshot", "duration_ms"}
    assert "to-stdout" in res["pre_script"]["output"]


def shut_down(mountpoint):
    """Puts an ext4/xfs filesystem in the shut-down state: FIFREEZE then fails with EIO."""
    import shutil
    if shutil.which("xfs_io") is None:
        pytest.skip("xfs_io (xfsprogs) is not installed")
    subprocess.run(["xfs_io", "-x", "-c", "shutdown", mountpoint], check=True)


def test_freeze_failure_is_121_everything_thawed_crash_consistent(tmp_path, loopfs):
    good, bad = loopfs.make(2)
    shut_down(bad)
    # the step and the post-script note what the kernel says of the good one as they run:
    # thawed at once when the other failed, not at the end of the run
    cfg = setup_scripts(tmp_path, post="echo %s > %s" % (frozen_or_thawed(good), tmp_path / "post"))
    rc, res, _ = run_json(tmp_path, cfg, [good, bad], snapshot=[
        "sh", "-c", "echo %s > %s" % (frozen_or_thawed(good), tmp_path / "snap")])
    assert codes(res) == ["FsFreezeFailed"] and bad in res["errors"][0]["message"]
    assert "EIO" in res["errors"][0]["message"]
    assert res["consistency"] == "crash" and res["status"] == "degraded" and rc == 3
    assert (tmp_path / "snap").read_text().split() == ["thawed"], "frozen during the snapshot"
    assert (tmp_path / "post").read_text().split() == ["thawed"]
    assert res["freeze"]["mounts"] and not frozen_state(good)
    check_errors(res)


def test_freeze_failure_continue_false_several_disks_fails(tmp_path, loopfs):
    good, bad = loopfs.make(2)
    shut_down(bad)
    cfg = setup_scripts(tmp_path, continueBackupOnFailure=False, post=marker(tmp_path, "post"))
    rc, res, _ = run_json(tmp_path, cfg, [good, bad], snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 1 and res["status"] == "failed" and not (tmp_path / "snap").exists()
    assert (tmp_path / "post").exists() and not frozen_state(good)


def test_every_error_code_has_number_message_and_action():
    from vmsnap_native.errors import CODES
    assert set(CODES) == set(ERROR_NUMBERS)   # SPEC §5's table, no more, no less
    for code, number in ERROR_NUMBERS.items():
        e = CODES[code]
        assert e.number == number and e.summary and e.action


# -- the pre-script only with a post-script that can run (issue 11 item 3) ---------------

def test_missing_post_script_withholds_the_pre_script(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre=marker(tmp_path, "pre-ran"))
    os.unlink(tmp_path / "etc" / "post.sh")
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["touch", str(tmp_path / "snap")])
    assert not (tmp_path / "pre-ran").exists(), "nothing would have resumed the application"
    assert codes(res) == ["Post-ScriptNotFound"] and rc == 3
    assert res["status"] == "degraded" and res["consistency"] == "filesystem"
    assert (tmp_path / "snap").exists() and res["pre_script"]["ran"] is False
    assert any("pre-script" in w and "not run" in w and "Post-ScriptNotFound" in w
               for w in res["warnings"])
    assert "not run" in p.stderr
    check_errors(res)


# -- the dry run decides as the run would, and says its plan (issue 11 item 7, issue 15) -----

def test_dry_run_honours_continue_false_on_several_disks(tmp_path, loopfs):
    mounts = loopfs.make(2)
    cfg = setup_scripts(tmp_path, continueBackupOnFailure=False)
    os.chmod(tmp_path / "etc" / "pre.sh", 0o777)   # refused by the policy
    rc, res, _ = run_json(tmp_path, cfg, mounts, snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 1 and res["status"] == "failed" and not (tmp_path / "snap").exists()
    p = vmsnap("run", "--dry-run", "--json", "--config", cfg, "--log-file", "",
               *[a for m in mounts for a in ("--mount", m)])
    dry = json.loads(p.stdout)
    assert p.returncode == 1 and dry["status"] == "failed", p.stderr
    assert codes(dry) == ["InsufficientPermissionforPre-Script"]
    assert dry["plan"]["snapshot"] is False and dry["plan"]["expected_consistency"] is None
    assert "snapshot step: NOT run" in p.stderr


def test_dry_run_prints_the_plan_in_words(tmp_path, loopfs):
    a, b = loopfs.make(2)
    cfg = setup_scripts(tmp_path, preScriptParams=["--flush"], preScriptNoOfRetries=1)
    p = vmsnap("run", "--dry-run", "--config", cfg, "--log-file", "", "--mount", a,
               "--mount", b)
    assert p.returncode == 0, p.stderr
    text = p.stderr
    assert "%s --flush (up to 2 attempts, 10s each)" % (tmp_path / "etc" / "pre.sh") in text
    assert "freeze, children before parents" in text and a in text and b in text
    assert "post-script: %s" % (tmp_path / "etc" / "post.sh") in text
    assert "expected consistency: application" in text
    assert not frozen_state(a) and not frozen_state(b)


def test_result_says_how_each_process_was_contained(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["true"])
    assert rc == 0
    for part in (res["pre_script"], res["post_script"], res["snapshot"]):
        assert "containment" in part
    from vmsnap_native.process import ProcessResult
    if "containment" in ProcessResult.__dataclass_fields__:   # the containment branch merged
        assert res["pre_script"]["containment"] and res["snapshot"]["containment"]


def test_windows_line_endings_are_named_by_check_and_by_the_failed_run(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    pre = tmp_path / "etc" / "pre.sh"
    pre.write_bytes(b"#!/bin/sh\r\nexit 3\r\n")
    p = vmsnap("check", "--json", "--config", cfg)
    problems = json.loads(p.stdout)["problems"]
    assert p.returncode == 1 and [x["code"] for x in problems] == ["Pre-ScriptExecutionFailed"]
    assert "Windows line endings" in problems[0]["message"] and "dos2unix" in p.stderr
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Pre-ScriptExecutionFailed"] and rc == 3
    assert "Windows line endings" in res["errors"][0]["message"]
