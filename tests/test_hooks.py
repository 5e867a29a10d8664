"""The hooks directory: several applications on one machine."""

from __future__ import annotations

import os

from .conftest import root_only
from .helpers import codes, run_json, setup_scripts, write_script

pytestmark = root_only


def make_hooks(tmp_path, bodies):
    d = tmp_path / "hooks.d"
    d.mkdir(mode=0o755)
    log = tmp_path / "hooks.log"
    for name, body in bodies.items():
        write_script(d / name, body.replace("LOG", str(log)))
    return d, log


RECORD = 'echo "$(basename $0) $1" >> LOG'


def test_order_reverse_order_and_leftovers_ignored(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, log = make_hooks(tmp_path, {
        "20-mariadb": RECORD, "10-postgres": RECORD, "30-redis": RECORD,
        "10-postgres~": RECORD, "20-mariadb.dpkg-old": RECORD, "30-redis.rpmnew": RECORD,
        "40-x.sample": RECORD, ".hidden": RECORD})
    with open(d / "README", "w") as f:      # not executable: not a hook
        f.write("notes\n")
    cfg = setup_scripts(tmp_path, pre='echo "pre" >> %s' % log, post='echo "post" >> %s' % log,
                        hooksDirectory=str(d))
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 0 and res["consistency"] == "application", res["errors"]
    assert log.read_text().splitlines() == [
        "pre", "10-postgres freeze", "20-mariadb freeze", "30-redis freeze",
        "30-redis thaw", "20-mariadb thaw", "10-postgres thaw", "post"]
    assert [(h["hook"], h["action"]) for h in res["hooks"]] == [
        ("10-postgres", "freeze"), ("20-mariadb", "freeze"), ("30-redis", "freeze"),
        ("30-redis", "thaw"), ("20-mariadb", "thaw"), ("10-postgres", "thaw")]
    assert [p["phase"] for p in res["phases"]] == [
        "pre-script", "hooks freeze", "freeze", "snapshot", "thaw", "hooks thaw", "post-script"]


def test_failing_hook_is_reported_by_name_and_still_thawed(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, log = make_hooks(tmp_path, {
        "10-ok": RECORD, "20-bad": RECORD + '; [ "$1" = thaw ] || exit 3', "30-ok": RECORD})
    cfg = setup_scripts(tmp_path, hooksDirectory=str(d))
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Pre-ScriptExecutionFailed"]
    assert "20-bad" in res["errors"][0]["message"]
    assert rc == 3 and res["consistency"] == "filesystem"
    assert "20-bad thaw" in log.read_text().splitlines()


def test_hook_failing_thaw_is_post_error(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, _ = make_hooks(tmp_path, {"10-x": '[ "$1" = freeze ]'})
    cfg = setup_scripts(tmp_path, hooksDirectory=str(d))
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Post-ScriptExecutionFailed"] and "10-x" in res["errors"][0]["message"]
    assert res["consistency"] == "application" and rc == 3


def test_badly_permitted_hook_refused_by_name_not_run(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, log = make_hooks(tmp_path, {"10-x": RECORD, "20-y": RECORD})
    os.chmod(d / "20-y", 0o755)
    cfg = setup_scripts(tmp_path, hooksDirectory=str(d))
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["InsufficientPermissionforPre-Script"]
    assert "20-y" in res["errors"][0]["message"]
    assert log.read_text().splitlines() == ["10-x freeze", "10-x thaw"]


def test_hook_timeout_uses_the_config_timeout(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, _ = make_hooks(tmp_path, {"10-slow": '[ "$1" = freeze ] && sleep 30; exit 0'})
    cfg = setup_scripts(tmp_path, hooksDirectory=str(d), timeoutInSeconds=0.5)
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert codes(res) == ["Pre-ScriptTimeout"] and "10-slow" in res["errors"][0]["message"]


def test_quiesce_lost_in_a_hook_thaw_downgrades(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    d, _ = make_hooks(tmp_path, {"10-db": '[ "$1" = freeze ] || exit 10'})
    cfg = setup_scripts(tmp_path, hooksDirectory=str(d))
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert res["consistency"] == "filesystem" and rc == 3
    assert "quiesce was lost" in res["errors"][0]["message"]


def test_quiesce_lost_in_post_script_downgrades(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="echo lock lost; exit 10")
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert res["consistency"] == "filesystem" and res["status"] == "degraded"
    assert codes(res) == ["Post-ScriptExecutionFailed"]
    assert "not application-consistent" in res["errors"][0]["message"]
