"""The group verdict's rules (vmsnap_group_verdict), as a pure function:
no hosts, no ansible needed (its import is stubbed when it is missing)."""

import datetime

import pytest

from .plugin_module import plugin_module


@pytest.fixture(scope="module")
def verdict():
    with plugin_module("vmsnap_group_verdict") as mod:
        yield mod.group_verdict


T = 1_800_000_000.0   # the controller's clock at the step's start


def stamp(t):
    return datetime.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S.%f")


def snap(start=T, end=T + 2, rc=0):
    return {"rc": rc, "failed": rc != 0, "start": stamp(start), "end": stamp(end)}


def host(frozen_at=T - 1, released_at=T + 3, offset=0.0, unc=0.01, pre_ok=True, covered=True,
         errors=()):
    clock = {"offset": offset, "uncertainty": unc}
    begin = {"frozen_at": frozen_at + offset, "lease_deadline": frozen_at + offset + 60,
             "clock": clock}
    end = {"status": "success", "consistency": "application", "covered": covered,
           "released_at": released_at + offset, "clock": clock,
           "errors": [{"code": c, "message": "m"} for c in errors],
           "pre_script": {"ran": True, "exit_code": 0 if pre_ok else 1, "timed_out": False}}
    return begin, end


def decide(verdict, hosts, snapshot=None, cont=True):
    names = ["h%d" % i for i in range(len(hosts))]
    return verdict(names, [b for b, _ in hosts], [e for _, e in hosts],
                   snap() if snapshot is None else snapshot, cont)


def test_every_window_covers_the_step(verdict):
    v = decide(verdict, [host(), host(offset=30.0), host(offset=-7.5)])
    assert (v["status"], v["consistency"], v["broken_by"]) == ("success", "application", [])


def test_a_host_clock_behind_is_moved_by_its_offset(verdict):
    # its clock is 2 s behind the controller's: "frozen at T - 1.5" on its
    # clock is T + 0.5 on the controller's, after the step began
    b, e = host(offset=-2.0)
    b["frozen_at"] = T - 1.5
    v = decide(verdict, [host(), (b, e)])
    assert v["broken_by"] == ["h1"] and "after the snapshot step began" in v["hosts"]["h1"]["reason"]
    assert (v["status"], v["consistency"]) == ("degraded", "crash")


def test_the_offset_uncertainty_counts_against_the_host(verdict):
    v = decide(verdict, [host(), host(frozen_at=T - 0.05, unc=0.1)])
    assert v["broken_by"] == ["h1"]
    v = decide(verdict, [host(), host(frozen_at=T - 0.05, unc=0.01)])
    assert v["broken_by"] == []


def test_a_thaw_before_the_step_ended_breaks_it(verdict):
    v = decide(verdict, [host(), host(released_at=T + 1)])
    assert v["broken_by"] == ["h1"] and "thawed at" in v["hosts"]["h1"]["reason"]
    v = decide(verdict, [host(), host(covered=False, errors=["FsFreezeTimeout"])])
    assert v["broken_by"] == ["h1"] and "FsFreezeTimeout" in v["hosts"]["h1"]["reason"]


def test_continue_on_failure_false_fails_the_group_and_names_the_host(verdict):
    v = decide(verdict, [host(), host(released_at=T + 1)], cont=False)
    assert (v["status"], v["consistency"], v["broken_by"]) == ("failed", None, ["h1"])
    assert "h1" in v["msg"]


def test_a_failed_pre_script_makes_the_group_filesystem_consistent_or_failed(verdict):
    v = decide(verdict, [host(), host(pre_ok=False)])
    assert (v["status"], v["consistency"]) == ("degraded", "filesystem") and "h1" in v["msg"]
    v = decide(verdict, [host(), host(pre_ok=False)], cont=False)
    assert (v["status"], v["broken_by"]) == ("failed", ["h1"])


def test_unreachable_or_unfrozen_hosts_are_named(verdict):
    b, _ = host()
    v = decide(verdict, [host(), (b, {"unreachable": True, "msg": "ssh: refused"})])
    assert v["broken_by"] == ["h1"] and "could not be confirmed" in v["hosts"]["h1"]["reason"]
    v = decide(verdict, [({"failed": True, "msg": "Pre-ScriptExecutionFailed"}, None), host()])
    assert v["broken_by"] == ["h0"] and "did not freeze" in v["hosts"]["h0"]["reason"]


def test_no_snapshot_or_a_failed_one_is_failed(verdict):
    v = decide(verdict, [host()], snapshot=snap(rc=1))
    assert (v["status"], v["consistency"]) == ("failed", None)
    v = decide(verdict, [host()], snapshot={"skipped": True, "skip_reason": "Conditional result was False"})
    assert (v["status"], v["consistency"]) == ("failed", None) and "no snapshot" in v["msg"]


def own(end, status, consistency, *errors, post_exit=0):
    """END as a host's run that ended STATUS/CONSISTENCY with ERRORS (code, message)."""
    end.update(status=status, consistency=consistency,
               errors=[{"code": c, "message": m} for c, m in errors],
               post_script={"ran": True, "exit_code": post_exit, "timed_out": False})
    return end


QUIESCE_LOST = ("Post-ScriptExecutionFailed", "/etc/vmsnap/post.sh reports that the "
                "application's quiesce was lost before the snapshot finished (exit 10)")


def test_a_host_whose_post_script_lost_the_quiesce_keeps_the_group_below_application(verdict):
    b, e = host()
    own(e, "degraded", "filesystem", QUIESCE_LOST, post_exit=10)
    v = decide(verdict, [host(), (b, e), host()])
    assert (v["status"], v["consistency"]) == ("degraded", "filesystem"), v["msg"]
    assert "h1" in v["msg"] and "quiesce was lost" in v["msg"]
    assert "h0" not in v["msg"] and "h2" not in v["msg"]
    v = decide(verdict, [host(), (b, e)], cont=False)
    assert (v["status"], v["consistency"], v["broken_by"]) == ("failed", None, ["h1"])
    assert "quiesce was lost" in v["msg"]


def test_any_error_of_a_hosts_own_run_means_the_group_is_not_application(verdict):
    b, e = host()
    own(e, "degraded", "application", ("Post-ScriptExecutionFailed", "exited with status 1"),
        post_exit=1)
    v = decide(verdict, [(b, e), host()])
    assert v["consistency"] != "application" and v["status"] == "degraded"
    assert "h0: its own run is degraded" in v["msg"] and "exited with status 1" in v["msg"]


def test_a_host_whose_own_run_failed_breaks_the_group(verdict):
    b, e = host()
    own(e, "failed", "application", ("Post-ScriptTimeout", "every attempt exceeded 30s"))
    v = decide(verdict, [host(), (b, e)])
    assert v["broken_by"] == ["h1"] and (v["status"], v["consistency"]) == ("degraded", "crash")
    assert "its own run is failed" in v["hosts"]["h1"]["reason"]
    assert "Post-ScriptTimeout" in v["msg"]
    v = decide(verdict, [host(), (b, e)], cont=False)
    assert (v["status"], v["broken_by"]) == ("failed", ["h1"])


def test_the_groups_own_failed_step_is_not_blamed_on_the_hosts(verdict):
    hosts = [host(), host()]
    for _, e in hosts:
        own(e, "failed", None, ("SnapshotFailed", "the group's snapshot step failed"))
    v = decide(verdict, hosts, snapshot=snap(rc=1))
    assert (v["status"], v["consistency"], v["broken_by"]) == ("failed", None, [])
    assert "the snapshot step failed" in v["msg"]


# --- a clock stepped during the group: judged with every measurement, the
# worst kept (an armed host's begin says armed_at/lease; its end frozen_at) --

def armed_host(frozen_at, released_at, arm_offset, end_offset, unc=0.005):
    begin = {"changed": True, "armed_at": T - 3, "lease": 60,
             "clock": {"offset": arm_offset, "uncertainty": unc}}
    end = {"status": "success", "consistency": "application", "errors": [], "covered": True,
           "frozen_at": frozen_at, "released_at": released_at,
           "pre_script": {"ran": True, "exit_code": 0, "timed_out": False},
           "clock": {"offset": end_offset, "uncertainty": unc}}
    return begin, end


def test_a_host_clock_stepped_back_while_armed_is_not_counted(verdict):
    """Host h1 was 10 s ahead at arm (told T+10 on its clock), NTP stepped it
    to true time while it waited: it froze at real T+10, long after the step
    [T+0.5, T+2.5]; its end (offset 0 by then) says frozen at T+10."""
    sane = armed_host(T + 0.05, T + 3.0, 0.0, 0.0)
    late = armed_host(T + 10.02, T + 13.0, 10.0, 0.0)
    v = decide(verdict, [sane, late], snapshot=snap(T + 0.5, T + 2.5))
    assert v["broken_by"] == ["h1"], v["hosts"]["h1"]
    assert "after the snapshot step began" in v["hosts"]["h1"]["reason"]
    assert (v["status"], v["consistency"]) != ("success", "application")


def test_the_controller_clock_stepped_before_the_step_is_not_counted(verdict):
    """The controller's clock stepped +5 s between the arm (offset 0) and the
    step: the step ran (recorded) at [T+0.5, T+2.5], really before the host
    froze; the end's measurement (offset -5) shows it."""
    h = armed_host(T + 0.02, T + 4.0, 0.0, -5.0)
    v = decide(verdict, [armed_host(T + 0.02, T + 4.0, 0.0, 0.0), h],
               snapshot=snap(T + 0.5, T + 2.5))
    assert v["broken_by"] == ["h1"], v["hosts"]["h1"]
    assert "after the snapshot step began" in v["hosts"]["h1"]["reason"]


def test_agreeing_measurements_keep_the_verdict(verdict):
    v = decide(verdict, [armed_host(T - 0.5, T + 3.0, 2.0 + 2.5, 2.5),
                         armed_host(T - 0.5, T + 3.0, 0.0, 0.0)])
    assert v["broken_by"] == ["h0"]   # offsets 4.5 vs 2.5: disagree by 2 s: worst kept
    v = decide(verdict, [armed_host(T - 0.5 + 2.5, T + 3.0 + 2.5, 2.5, 2.501),
                         armed_host(T - 0.5, T + 3.0, 0.0, 0.0)])
    assert (v["status"], v["consistency"], v["broken_by"]) == ("success", "application", [])


# --- the end of the window by causality: the host's wait step holds the
# freeze until the controller's release, sent after the step ended ----------

def released(sent_at, state="released"):
    return {"changed": state == "released", "release": {"state": state, "sent_at": sent_at}}


def loose_end(b, e):
    """The end task's reading, taken while every host collects at once: loose,
    and its middle near the edge of what it allows (the CI failure's shape)."""
    e["clock"] = {"offset": 0.07, "uncertainty": 0.075}
    return b, e


def decide_released(verdict, hosts, releases, snapshot):
    names = ["h%d" % i for i in range(len(hosts))]
    return verdict(names, [b for b, _ in hosts], [e for _, e in hosts], snapshot, True,
                   (), releases)


def test_a_host_released_after_the_step_covers_its_end_whatever_its_clock_says(verdict):
    # released 5 ms after the step's end: its clock readings cannot show it
    # (the loose end reading puts its thaw before the end), the release can
    step = snap(T + 0.5, T + 2.5)
    h = loose_end(*armed_host(T + 0.02, T + 2.505, 0.0, 0.0, unc=0.005))
    v = decide_released(verdict, [h], [None], step)
    assert v["broken_by"] == ["h0"] and "before the snapshot step ended" in v["hosts"]["h0"]["reason"]
    v = decide_released(verdict, [h], [released(T + 2.501)], step)
    assert (v["status"], v["consistency"], v["broken_by"]) == ("success", "application", []), v
    assert v["hosts"]["h0"]["frozen_until_by"] == "release"
    assert v["hosts"]["h0"]["frozen_until"] == T + 2.501
    # its clock says later than the release: still proven by the release, the later kept
    b, e = armed_host(T + 0.02, T + 3.0, 0.0, 0.0)
    v = decide_released(verdict, [(b, e)], [released(T + 2.501)], step)
    assert v["hosts"]["h0"]["frozen_until_by"] == "release", v["hosts"]["h0"]
    assert v["hosts"]["h0"]["frozen_until"] == pytest.approx(T + 2.995)
    # the end task's own release counts as well (the release task was unreachable)
    b, e = h
    e = dict(e, release={"state": "released", "sent_at": T + 2.501})
    v = decide_released(verdict, [(b, e)], [{"unreachable": True}], step)
    assert v["broken_by"] == [], v["hosts"]["h0"]


def test_a_release_that_proves_nothing_leaves_the_clock_to_judge(verdict):
    step = snap(T + 0.5, T + 2.5)
    h = loose_end(*armed_host(T + 0.02, T + 2.505, 0.0, 0.0, unc=0.005))
    for rel in (released(T + 2.501, state="already"),   # someone else's release
                released(T + 2.4),                       # sent before the step ended
                released(None),                          # the module's own release: no controller time
                {"skipped": True}):
        v = decide_released(verdict, [h], [rel], step)
        assert v["broken_by"] == ["h0"], rel
        assert v["hosts"]["h0"]["frozen_until_by"] == "clock"


def test_a_release_does_not_cover_a_host_that_thawed_on_its_own(verdict):
    # its run says the freeze broke (deadline, early thaw): the release came too late
    b, e = armed_host(T + 0.02, T + 2.6, 0.0, 0.0)
    e["covered"] = False
    v = decide_released(verdict, [(b, e)], [released(T + 2.55)], snap(T + 0.5, T + 2.5))
    assert v["broken_by"] == ["h0"]
    # nor one that froze after the step began
    b, e = armed_host(T + 0.6, T + 2.6, 0.0, 0.0)
    v = decide_released(verdict, [(b, e)], [released(T + 2.55)], snap(T + 0.5, T + 2.5))
    assert v["broken_by"] == ["h0"] and "after the snapshot step began" in v["hosts"]["h0"]["reason"]


def test_a_loose_arm_reading_is_superseded_by_the_clock_tasks(verdict):
    """The arm's reading (taken while every host ran its module) is loose and
    its middle off; the clock task's, taken after it and before the freeze,
    is tight: the window is judged by the later one (and the end's)."""
    b, e = armed_host(T + 0.3, T + 3.0, 0.0, 0.0)
    b["clock"] = {"offset": -0.2, "uncertainty": 0.25}   # says the freeze may be at T+0.75
    step = snap(T + 0.5, T + 2.5)
    v = verdict(["h0"], [b], [e], step, True)
    assert v["broken_by"] == ["h0"]   # no later reading: the arm's counts
    tight = {"clock": {"offset": 0.001, "uncertainty": 0.005}}
    v = verdict(["h0"], [b], [e], step, True, [tight])
    assert (v["status"], v["consistency"], v["broken_by"]) == ("success", "application", []), v
    # the end's reading still counts: the host's clock stepped back 1 s after
    # the clock task, before the freeze (its frozen_at is on the stepped clock)
    e["clock"] = {"offset": -1.0, "uncertainty": 0.005}
    v = verdict(["h0"], [b], [e], step, True, [tight])
    assert v["broken_by"] == ["h0"] and "after the snapshot step began" in v["hosts"]["h0"]["reason"]


# --- a clock step during a host's freeze: the host says so (clock_stepped) ---

def stepped_timeline(clock_stepped):
    """Real time: the step runs [T+0.5, T+2.5]; the host's freeze is slow and
    completes at T+0.9 (after the step began). At real T+0.7 one clock shared
    by the controller and the host steps back 1 s: every offset still reads
    0 (clock task before, end after), and the host's stamps are 1 s behind.
    The host measured its wall clock against its monotonic clock from arming
    to the end of its freeze: it moved by -1 s (clock_stepped)."""
    b, e = armed_host(T + 0.9 - 1.0, T + 2.6 - 1.0, 0.0, 0.0)
    if clock_stepped is not None:
        e.update(clock_moved=-1.0 if clock_stepped else 0.0003, clock_stepped=clock_stepped)
    return (b, e), snap(T + 0.5, T + 2.5 - 1.0), T + 2.55 - 1.0


TIGHT = {"clock": {"offset": 0.0, "uncertainty": 0.005}}


def test_a_host_whose_clock_stepped_during_its_freeze_is_not_covered(verdict):
    (b, e), step, sent = stepped_timeline(True)
    v = verdict(["h0"], [b], [e], step, True, [TIGHT], [released(sent)])
    assert v["broken_by"] == ["h0"] and "clock step" in v["hosts"]["h0"]["reason"], v
    # the same times, the host saw no step: judged by them (here: covered)
    (b, e), step, sent = stepped_timeline(False)
    v = verdict(["h0"], [b], [e], step, True, [TIGHT], [released(sent)])
    assert v["broken_by"] == [], v["hosts"]["h0"]


def test_a_host_without_a_clock_reading_after_its_freeze_is_not_covered(verdict):
    # its clock stepped back 1 s during its freeze; with its end reading it is caught
    b, e = armed_host(T + 0.9 - 1.0, T + 2.6 - 1.0, 0.0, -1.0)
    step, rel = snap(T + 0.5, T + 2.5), released(T + 2.55)
    v = verdict(["h0"], [b], [e], step, True, [TIGHT], [rel])
    assert v["broken_by"] == ["h0"]
    # without it, the readings before its freeze cannot tell
    e["clock"] = {"offset": None, "uncertainty": None, "error": "cannot read the host's clock"}
    v = verdict(["h0"], [b], [e], step, True, [TIGHT], [rel])
    assert v["broken_by"] == ["h0"] and "after the freeze" in v["hosts"]["h0"]["reason"], v


@pytest.mark.parametrize("where", ["host: clock task..freeze", "host: freeze..end",
                                   "controller: clock task..step start",
                                   "controller: step start..end"])
def test_any_single_clock_step_is_caught(verdict, where):
    """One step of 1 s back (or forward) of ONE clock anywhere between the
    clock task and the end task: the worst of the clock task's and the end's
    offsets catches a host that froze 0.4 s after the step began, even with
    no word from the host."""
    for d in (-1.0, 1.0):
        # real: clock task < step start T+0.5 < freeze T+0.9 < step end T+2.5 < end task
        h = {"freeze": 0.0, "end": 0.0}
        c = {"start": 0.0, "end_of_step": 0.0, "end": 0.0}
        if where == "host: clock task..freeze":
            h.update(freeze=d, end=d)
        elif where == "host: freeze..end":
            h["end"] = d
        elif where == "controller: clock task..step start":
            c.update(start=d, end_of_step=d, end=d)
        else:
            c.update(end_of_step=d, end=d)
        host = armed_host(T + 0.9 + h["freeze"], T + 2.6 + h["end"], 0.0, h["end"] - c["end"])
        step = snap(T + 0.5 + c["start"], T + 2.5 + c["end_of_step"])
        v = verdict(["h0"], [host[0]], [host[1]], step, True,
                    [{"clock": {"offset": 0.0, "uncertainty": 0.005}}],
                    [released(T + 2.55 + c["end"])])
        assert v["broken_by"] == ["h0"], (where, d, v["hosts"]["h0"])


def test_the_steps_own_epoch_times_are_read_before_its_local_time_stamps(verdict):
    """In the hour a DST change repeats, the local-time stamps read back an
    hour off; the role's step also gives its times in seconds since the
    epoch, and those are what count."""
    step = dict(snap(T + 3600, T + 3602), start_epoch=T, end_epoch=T + 2)
    v = decide(verdict, [host()], snapshot=step)
    assert (v["status"], v["consistency"], v["broken_by"]) == ("success", "application", []), v
    v = decide(verdict, [host()], snapshot=snap(T + 3600, T + 3602))   # the stamps alone
    assert v["broken_by"] == ["h0"]
