"""What a run freezes when the configuration is broken, and when the
selection names something that is not a mount point.

A configuration never widens the freeze: a file that cannot be used (305,
317) still has its fsFreezeEnabled, mountsToSkip and mountsToFreeze
honoured when each is valid on its own; a file that cannot be read at all
freezes nothing but the mounts named with --mount.  A selection that names
what is no mount point stops the run before anything runs.

Safety: a real run here never goes without an explicit selection that a
dry run with the same configuration has just shown to be only this test's
loop filesystems (a broken selection would otherwise freeze `/`)."""

from __future__ import annotations

import json
import os

import pytest

from vmsnap_native import cycle

from .conftest import root_only
from .helpers import codes, run_json, setup_scripts, vmsnap, write_config

pytestmark = root_only   # the configuration must be root's (else 317), and most tests freeze

BAD_TIMEOUT = {"timeoutInSeconds": "thirty"}


def dry_run(config, *mounts):
    args = ["run", "--dry-run", "--json", "--log-file", "", "--config", str(config)]
    for m in mounts:
        args += ["--mount", m]
    p = vmsnap(*args)
    return p.returncode, json.loads(p.stdout)


def planned(res) -> list:
    return res["plan"]["freeze"]["mounts"]


def safe_run(tmp_path, cfg, expected, mounts=(), snapshot=("true",)):
    """A real run, after a dry run with the same arguments showed that it
    freezes EXPECTED and nothing else."""
    _, dry = dry_run(cfg, *mounts)
    assert sorted(planned(dry)) == sorted(expected), "refusing a real run: %s" % dry["plan"]
    return run_json(tmp_path, cfg, mounts, snapshot=snapshot)


def frozen(res) -> list:
    return sorted(m["mountpoint"] for m in res["freeze"]["mounts"] if m["frozen"])


# -- 305 / 317: the selection fields still hold ---------------------------------------

@pytest.mark.parametrize("broken", [
    {"timeoutInSeconds": "thirty"},                  # a wrong type
    {"preScriptLocation": None},                     # a missing required field
    {"preScriptNoOfRetries": -1, "colour": "blue"},  # out of bounds, and an unknown field
])
def test_a_bad_field_never_unskips_the_root_filesystem(tmp_path, broken):
    """`"timeoutInSeconds": "thirty"` beside `"mountsToSkip": ["/"]`: the
    scripts are skipped (305) but / stays skipped (it used to be planned)."""
    fields = dict(mountsToSkip=["/"], **broken)
    cfg = setup_scripts(tmp_path, **{k: v for k, v in fields.items() if v is not None})
    if broken.get("preScriptLocation", 1) is None:
        doc = json.load(open(cfg))
        del doc["preScriptLocation"]
        write_config(cfg, **doc)
    rc, res = dry_run(cfg)
    assert codes(res) == ["IncorrectJSONConfigFile"]
    assert "/" not in planned(res), res["plan"]
    assert any("mountsToSkip" in w and "still apply" in w for w in res["warnings"]), res
    assert res["plan"]["pre_script"] is None   # scripts skipped


def test_a_badly_permitted_file_keeps_its_selection_but_not_its_metrics_file(tmp_path):
    """Whoever can write a 644 file could point root's metrics write anywhere:
    its metricsFile is not used; a 305 file is root's, and its metricsFile is."""
    prom = str(tmp_path / "x.prom")
    cfg = setup_scripts(tmp_path, mountsToSkip=["/"], metricsFile=prom)
    os.chmod(cfg, 0o644)
    rc, res = dry_run(cfg)
    assert codes(res) == ["InsufficientPermissionforJSONConfigFile"]
    assert "/" not in planned(res)
    assert cycle.make_plan(cfg).settings.metrics_file is None
    cfg = setup_scripts(tmp_path, mountsToSkip=["/"], metricsFile=prom, **BAD_TIMEOUT)
    plan = cycle.make_plan(cfg)
    assert plan.config_problem.number == 305 and plan.settings.metrics_file == prom


def test_a_bad_field_keeps_fs_freeze_enabled_false(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, fsFreezeEnabled=False, **BAD_TIMEOUT)
    rc, res = dry_run(cfg, a)
    assert res["plan"]["freeze"]["enabled"] is False and planned(res) == []


def test_a_bad_field_keeps_mounts_to_freeze_and_mounts_to_skip_in_a_real_run(tmp_path, loopfs):
    a, b, c = loopfs.make(3)
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a, b], mountsToSkip=[b], **BAD_TIMEOUT)
    rc, res, p = safe_run(tmp_path, cfg, [a])
    assert frozen(res) == [a], res["freeze"]
    assert res["status"] == "degraded" and codes(res) == ["IncorrectJSONConfigFile"]
    assert res["consistency"] == "filesystem"


# -- a file that cannot be read: only --mount ---------------------------------------

UNREADABLE = {
    "not-json": b"{ this is not json",
    "not-an-object": b'["/"]',
    "not-utf8": b'{"mountsToSkip": ["/\xff"]}',
    "duplicate-keys": b'{"mountsToSkip": ["/"], "mountsToSkip": []}',
    "bad-selection-field": b'{"mountsToSkip": "/", "preScriptLocation": "/a"}',
    "bad-fs-freeze-enabled": b'{"fsFreezeEnabled": "no"}',
}


@pytest.mark.parametrize("kind", sorted(UNREADABLE) + ["a-directory", "badly-permitted-not-json"])
def test_an_unreadable_file_freezes_nothing_but_what_mount_names(tmp_path, kind):
    path = tmp_path / "config.json"
    if kind == "a-directory":
        path.mkdir()
    else:
        path.write_bytes(UNREADABLE.get(kind, b"not json"))
        os.chmod(path, 0o644 if kind.startswith("badly") else 0o600)
    rc, res = dry_run(path)
    assert planned(res) == [], res["plan"]
    assert any("nothing is frozen except mounts named with --mount" in w
               for w in res["warnings"]), res["warnings"]
    assert res["errors"], res


def test_an_unreadable_file_with_mount_freezes_just_that_in_a_real_run(tmp_path, loopfs):
    a, b = loopfs.make(2)
    path = tmp_path / "config.json"
    path.write_bytes(b"{ not json, and would have said mountsToSkip")
    os.chmod(path, 0o600)
    rc, res, p = safe_run(tmp_path, path, [a], mounts=[a])
    assert frozen(res) == [a] and res["status"] == "degraded", res
    assert any("--mount (%s)" % a in w for w in res["warnings"]), res["warnings"]


def test_mounts_lists_why_nothing_is_selected(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"nope")
    os.chmod(path, 0o600)
    p = vmsnap("mounts", "--json", "--config", str(path))
    sel = json.loads(p.stdout)
    assert sel["eligible"] == []
    assert any("configuration cannot be read" in (c["reason"] or "") for c in sel["skipped"])


# -- a selection that names what is no mount point ------------------------------------

@pytest.mark.parametrize("how", ["--mount", "mountsToFreeze"])
def test_a_mistyped_mount_runs_nothing_and_fails(tmp_path, loopfs, how):
    """The mistyped name used to run the pre-script, snapshot with nothing
    frozen and exit 3 (which the timer unit counts as success)."""
    (a,) = loopfs.make(1)
    typo = a + "-typo"
    marker = tmp_path / "pre-ran"
    fields = {"mountsToFreeze": [a, typo]} if how == "mountsToFreeze" else {}
    cfg = setup_scripts(tmp_path, pre="touch %s" % marker, **fields)
    mounts = [a, typo] if how == "--mount" else []
    rc, res, p = run_json(tmp_path, cfg, mounts, snapshot=["touch", str(tmp_path / "snap")])
    assert rc == 1 and res["status"] == "failed", res
    assert not marker.exists(), "the pre-script ran"
    assert not (tmp_path / "snap").exists() and res["pre_script"] is None
    assert codes(res) == ["UnableToOpenMount"] and typo in res["errors"][0]["message"]
    assert how in res["errors"][0]["message"]
    assert frozen(res) == []


def test_check_reports_a_mistyped_mounts_to_freeze(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    typo = a + "-typo"
    cfg = setup_scripts(tmp_path, mountsToFreeze=[a, typo])
    p = vmsnap("check", "--json", "--config", cfg)
    report = json.loads(p.stdout)
    assert p.returncode == 1 and [x["code"] for x in report["problems"]] == ["UnableToOpenMount"]
    assert typo in report["problems"][0]["message"]


def test_the_dry_run_says_nothing_would_run(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    rc, res = dry_run(cfg, a, "/no/such/mount")
    assert rc == 1 and res["status"] == "failed"
    assert res["plan"]["pre_script"]["runs"] is False
    assert "/no/such/mount" in res["plan"]["pre_script"]["why_not"]
    assert res["plan"]["snapshot"] is False and "/no/such/mount" in res["plan"]["snapshot_why_not"]


def test_mounts_given_as_a_generator_or_a_string_are_read_once(tmp_path, loopfs):
    """The Python API takes any iterable: read twice, a generator would be
    empty the second time (and the warning would eat it before the selection)."""
    (a,) = loopfs.make(1)
    bad = tmp_path / "config.json"
    bad.write_bytes(b"not json")
    os.chmod(bad, 0o600)
    for mounts in ((m for m in [a]), a):
        plan = cycle.make_plan(str(bad), mounts=mounts)
        assert [c.mount.mountpoint for c in plan.selection.eligible] == [a]
        assert plan.selection_source == "--mount"
