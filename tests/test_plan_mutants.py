"""What `vmsnap run --dry-run --json` says a run would do, field by field:
the scripts' fates and why, the filesystems, the snapshot and the expected
verdict (vmsnap_native.plan, called in-process as the CLI calls it; root
for the scripts' checks, loop filesystems for the mounts; nothing freezes)."""

from __future__ import annotations

import os

from vmsnap_native.plan import dry_run_result, make_plan

from .conftest import frozen_state, root_only
from .helpers import setup_scripts

pytestmark = root_only


def dry(cfg, mounts=None, timeout=None):
    return dry_run_result(make_plan(cfg, mounts=mounts, freeze_timeout=timeout)).to_dict()


def test_a_good_configuration_plans_every_step(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a], preScriptParams=["--flush"],
                        preScriptNoOfRetries=2, timeoutInSeconds=15)
    pre, post = str(tmp_path / "etc" / "pre.sh"), str(tmp_path / "etc" / "post.sh")
    res = dry(cfg, timeout=45)
    assert (res["status"], res["errors"]) == ("success", [])
    plan = res["plan"]
    assert plan["config"] == cfg
    assert plan["pre_script"] == {"path": pre, "runs": True, "runs_as": [pre, "--flush"],
                                  "attempts": 3, "timeout_s": 15}
    assert plan["post_script"] == {"path": post, "runs": True, "runs_as": [post],
                                   "attempts": 1, "timeout_s": 15}
    assert plan["hooks"] == []
    assert plan["freeze"] == {"enabled": True, "timeout_s": 45.0, "mounts": [a], "problems": []}
    assert (plan["snapshot"], plan["snapshot_why_not"]) == (True, None)
    assert (plan["one_disk"], plan["continue_on_failure"], plan["expected_consistency"]) == \
        (True, True, "application")
    (entry,) = res["freeze"]["mounts"]
    assert entry["mountpoint"] == a and entry["fstype"] == "ext4"
    dev = os.stat(a).st_dev
    assert entry["device"] == "%d:%d" % (os.major(dev), os.minor(dev))
    assert {k: entry[k] for k in ("frozen", "freeze_ms", "thaw_ms", "error")} == \
        {"frozen": False, "freeze_ms": None, "thaw_ms": None, "error": None}
    assert res["freeze"]["enabled"] is True
    assert not frozen_state(a)


def test_a_refused_post_script_withholds_the_pre_script_and_says_why(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a])
    pre, post = str(tmp_path / "etc" / "pre.sh"), str(tmp_path / "etc" / "post.sh")
    os.chmod(post, 0o777)
    res = dry(cfg)
    plan = res["plan"]
    code = res["errors"][0]["code"]
    assert code == "InsufficientPermissionforPost-Script"
    assert plan["pre_script"] == {
        "path": pre, "runs": False, "runs_as": [pre], "attempts": 1, "timeout_s": 10,
        "why_not": "the post-script cannot run (%s): nothing else would resume the "
                   "application" % code}
    assert plan["post_script"]["runs"] is False and plan["post_script"]["runs_as"] is None
    assert plan["post_script"]["why_not"] == res["errors"][0]["message"]
    assert ("pre-script %s not run: the post-script cannot run (%s), and nothing else would "
            "resume the application" % (pre, code)) in res["warnings"]
    assert plan["snapshot"] is True and plan["expected_consistency"] == "filesystem"
    assert res["status"] == "degraded"


def test_a_refused_pre_script_leaves_nothing_to_resume(tmp_path, loopfs):
    a, b = loopfs.make(2)
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a, b], continueBackupOnFailure=False)
    os.chmod(tmp_path / "etc" / "pre.sh", 0o777)
    res = dry(cfg)
    plan = res["plan"]
    assert plan["post_script"]["why_not"] == "the pre-script does not run: nothing to resume"
    assert plan["post_script"]["runs"] is False
    assert plan["pre_script"]["why_not"] == res["errors"][0]["message"]
    # continueBackupOnFailure false on two disks: no freeze, no snapshot
    assert plan["one_disk"] is False and plan["continue_on_failure"] is False
    assert plan["freeze"]["mounts"] == [] and plan["snapshot"] is False
    assert plan["snapshot_why_not"] == ("a script or the freeze failed and "
                                        "continueBackupOnFailure is false (several disks)")
    assert (res["status"], plan["expected_consistency"]) == ("failed", None)


def test_a_mount_that_is_not_one_stops_everything_and_says_who_named_it(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    nowhere = str(tmp_path / "nowhere")
    os.mkdir(nowhere)
    res = dry(cfg, mounts=[a, nowhere])
    why = "%s named by --mount is not a mount point: nothing runs" % nowhere
    plan = res["plan"]
    assert plan["pre_script"]["why_not"] == why and plan["pre_script"]["runs"] is False
    assert plan["post_script"]["why_not"] == why and plan["post_script"]["runs"] is False
    assert (plan["snapshot"], plan["snapshot_why_not"]) == (False, why)
    assert plan["freeze"]["mounts"] == []
    assert [e["message"] for e in res["errors"]] == [
        "%s: not a mount point (named by --mount): nothing runs while the selection names it "
        "(no script, no freeze, no snapshot)" % nowhere]
    assert plan["freeze"]["problems"] == [res["errors"][0]["message"]]


def test_without_the_freeze_the_plan_freezes_nothing(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a], fsFreezeEnabled=False)
    res = dry(cfg)
    assert res["plan"]["freeze"]["enabled"] is False and res["plan"]["freeze"]["mounts"] == []
    assert res["freeze"]["enabled"] is False
    assert (res["status"], res["plan"]["expected_consistency"]) == ("success", "application")
