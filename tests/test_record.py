"""The value classes (vmsnap_native._record) behave as the dataclasses they
replaced: constructors, repr, equality, hash and immutability, and
dataclasses' own functions on the public classes, which a program that
embeds vmsnap may use (is_dataclass, fields, asdict, replace)."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

import vmsnap_native as vmsnap
from vmsnap_native import decide, mountinfo
from vmsnap_native.errors import CODES, Error
from vmsnap_native.freeze import MountResult
from vmsnap_native.process import ProcessResult
from vmsnap_native.result import Result, ScriptResult


def test_the_public_classes_are_dataclasses_to_dataclasses():
    for cls in (vmsnap.Config, vmsnap.Result, vmsnap.MountResult, vmsnap.ProcessResult, Error):
        assert dataclasses.is_dataclass(cls)
    assert [f.name for f in dataclasses.fields(Error)] == ["code", "number", "message", "action"]
    assert [f.name for f in dataclasses.fields(MountResult("/m", "ext4", "7:0", 0))][:4] == [
        "mountpoint", "fstype", "device", "level"]
    p = ProcessResult(["true"], 0, None, False, 1.5, "out")
    assert dataclasses.asdict(p)["argv"] == ["true"]
    assert dataclasses.replace(p, exit_code=3) == ProcessResult(["true"], 3, None, False, 1.5, "out")
    e = CODES["SnapshotFailed"].error("it failed")
    assert dataclasses.asdict(e) == e.to_dict() == {
        "code": "SnapshotFailed", "number": 400, "message": "it failed", "action": "see its output"}
    assert dataclasses.replace(e, message="m").message == "m"


def test_a_result_turns_into_the_same_dict_as_asdict_made():
    res = Result(status="degraded", pre_script=ScriptResult("/p", ran=True, exit_code=0))
    res.add_error(CODES["Pre-ScriptTimeout"].error("slow"))
    res.hooks.append({"hook": "h", "error": None})
    d = res.to_dict()
    assert d == dataclasses.asdict(res)
    assert list(d) == ["status", "consistency", "errors", "warnings", "pre_script", "post_script",
                       "freeze", "snapshot", "duration_ms", "hooks", "phases", "plan"]
    assert d["errors"] == [{"code": "Pre-ScriptTimeout", "number": 308, "message": "slow",
                            "action": CODES["Pre-ScriptTimeout"].action}]
    assert d["pre_script"]["path"] == "/p" and d["freeze"]["mounts"] == []
    assert d["hooks"][0] is not res.hooks[0]   # copies, as asdict made


def test_values_compare_print_and_hash_as_dataclasses_did():
    a = decide.StepFact("pre", decide.OK, "/p")
    assert a == decide.StepFact("pre", decide.OK, "/p") and a != decide.StepFact("pre")
    assert repr(a) == "StepFact(role='pre', state='ok', who='/p', detail='', problem=None)"
    assert len({a, decide.StepFact("pre", decide.OK, "/p")}) == 1   # frozen: hashable
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.state = decide.FAILED   # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(decide.Outcome())   # mutable: no hash
    o = decide.Outcome()
    assert o.hook_freeze is not decide.Outcome().hook_freeze   # a new list each
    assert o.pre == decide.StepFact("pre") and o.post == decide.StepFact("post", decide.NOT_NEEDED)
    assert copy.deepcopy(o) == o and pickle.loads(pickle.dumps(a)) == a


def test_a_changed_copy_keeps_the_rest():
    m = mountinfo.Mount(1, 0, 8, 1, "/", "/data", ("rw",), (), "ext4", "/dev/sda1", ("rw",))
    c = mountinfo.Candidate(m, True, level=2)
    assert c.replaced(level=0) == mountinfo.Candidate(m, True, None, 0) and c.level == 2
    assert m.replaced(mountpoint="/data/x").mountpoint == "/data/x" and m.mountpoint == "/data"
    with pytest.raises(TypeError):
        m.replaced(nothing=1)
