"""A held freeze (`vmsnap freeze` / `vmsnap thaw --session`) as its JSON and
messages say it, word for word: what was frozen, what was refused and why,
how a lease ended (vmsnap_native.held in-process, as the CLI calls it; root,
loop filesystems only)."""

from __future__ import annotations

import os

from vmsnap_native import freeze, held, process

from .conftest import frozen_state, root_only

pytestmark = root_only

KEYS = ["status", "session", "warnings", "guardian_pid", "timeout", "record", "mounts", "errors"]


def test_a_held_freeze_reports_each_filesystem_and_its_lease_ends_it(loopfs):
    a, b = loopfs.make(2)
    h = held.freeze_and_hold(None, [a, b], 30)
    try:
        d = h.to_dict()
        assert list(d) == KEYS
        assert (d["status"], d["errors"], d["timeout"]) == ("frozen", [], 30)
        assert sorted(m["mountpoint"] for m in d["mounts"]) == sorted([a, b])
        assert all(m["frozen"] for m in d["mounts"])
        assert d["session"] == "%d-%d-%s" % (h.guardian_pid, process.starttime(h.guardian_pid),
                                             d["session"].rsplit("-", 1)[1])
        assert os.path.exists(d["record"]) and frozen_state(a) and frozen_state(b)
    finally:
        t = held.thaw_session(h.session)
    assert t.to_dict() == {"session": h.session, "status": "thawed",
                           "message": "thawed: the freeze held until now",
                           "filesystems": [{"mountpoint": m, "outcome": "thawed by its guardian"}
                                           for m in (a, b)]}
    assert not frozen_state(a) and not frozen_state(b)
    again = held.thaw_session(h.session)
    assert (again.status, again.ok) == ("expired", False)
    assert again.message == ("that freeze no longer holds (its deadline passed, another thaw "
                             "ended it, or its guardian died and it was thawed from its "
                             "record): the snapshot it was for is not consistent")


def test_what_cannot_be_held_is_said_and_nothing_is_frozen(tmp_path, loopfs):
    (a,) = loopfs.make(1)
    nowhere = str(tmp_path / "nowhere")
    os.mkdir(nowhere)
    h = held.freeze_and_hold(None, [a, nowhere], 30)
    assert h.to_dict() == {"status": "failed", "session": None, "warnings": [],
                           "guardian_pid": None, "timeout": 30, "record": None, "mounts": [],
                           "errors": ["not a mount point: %s" % nowhere]}
    assert not frozen_state(a)
    cfg = tmp_path / "config.json"
    cfg.write_text('{"mountsToFreeze": []}')
    os.chmod(cfg, 0o600)
    h = held.freeze_and_hold(str(cfg), None, 30)
    assert (h.status, h.errors) == ("failed", ["no filesystem to freeze"])


def test_output_to_a_file_on_a_filesystem_to_freeze_is_refused(loopfs):
    (a,) = loopfs.make(1)
    plan_cands = held.make_plan(None, mounts=[a]).selection.eligible
    with open(os.path.join(a, "out.txt"), "w") as f:
        assert held.output_on(plan_cands, [("stdout", f)]) == (
            "stdout is a file on %s, which would be frozen: redirect it elsewhere" % a)
    with open(os.devnull, "w") as f:
        assert held.output_on(plan_cands, [("stdout", f)]) is None


def test_sessions_that_are_not_leases_are_said_so(loopfs):
    t = held.thaw_session("12-34")
    assert (t.status, t.message) == (
        "unknown", "not a session id (PID-START-BOOT, as `vmsnap freeze` prints it)")
    me = held.session_id(os.getpid(), process.starttime(os.getpid()))
    t = held.thaw_session(me)
    assert (t.status, t.message) == (
        "unknown", "process %d is not the guardian of a held freeze" % os.getpid())
    t = held.thaw_session(me[:-8] + ("0" * 8 if not me.endswith("0" * 8) else "1" * 8))
    assert (t.status, t.message) == (
        "expired", "the machine has restarted since: that freeze ended with it")


def test_records_that_cannot_be_read_do_not_hide_the_lease(loopfs):
    """Names that look like records but cannot be opened (a link) or read (a
    crash mid-write, say) sort before the lease's own: thaw --session still
    finds the lease's record behind them."""
    (a,) = loopfs.make(1)
    link = os.path.join(freeze.runtime_dir(), "freeze-0-link.rec")
    junk = os.path.join(freeze.runtime_dir(), "freeze-00-garbled.rec")
    os.symlink("/nonexistent", link)
    with open(junk, "wb") as f:
        f.write(b"not a freeze record")
    try:
        h = held.freeze_and_hold(None, [a], 30)
        assert h.status == "frozen", h.errors
        t = held.thaw_session(h.session)
        assert (t.status, t.message) == ("thawed", "thawed: the freeze held until now")
        assert not frozen_state(a)
    finally:
        for path in (link, junk):
            if os.path.lexists(path):
                os.unlink(path)
