"""The decision table of SPEC §5 as a pure function: every row, and
properties over every combination of facts (hypothesis).  No root, no
filesystem, no process: these run as any user."""

from __future__ import annotations

import copy
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmsnap_native import decide
from vmsnap_native.decide import Outcome, Settings, StepFact
from vmsnap_native.errors import (
    CODES,
    CONFIG_INVALID,
    FS_FREEZE_FAILED,
    POST_SCRIPT_NOT_FOUND,
    PRE_SCRIPT_NOT_FOUND,
    SNAPSHOT_FAILED,
)

# `make mutants` runs these once per mutant: a few hundred examples each time
# (an explicit max_examples overrides its hypothesis profile, so cap it here)
MUTANTS = os.environ.get("VMSNAP_HYPOTHESIS_PROFILE") == "mutants"


def examples(n):
    return min(n, 200) if MUTANTS else n


KEEP_GOING, STRICT = Settings(continue_on_failure=True), Settings(continue_on_failure=False)


def codes(verdict):
    return [e.code for e in verdict.errors]


def pre(state):
    problem = PRE_SCRIPT_NOT_FOUND.error("/etc/pre.sh: no such file") if state == decide.REFUSED \
        else None
    return StepFact("pre", state, "/etc/pre.sh", "exited with status 4 (attempts: 1)", problem)


def post(state):
    problem = POST_SCRIPT_NOT_FOUND.error("/etc/post.sh: no such file") \
        if state == decide.REFUSED else None
    return StepFact("post", state, "/etc/post.sh", "exited with status 2 (attempts: 1)", problem)


def ran(**facts):
    """A run with scripts that went well unless FACTS say otherwise."""
    base = dict(pre=pre(decide.OK), post=post(decide.OK), freeze=decide.FROZEN,
                snapshot=decide.TAKEN)
    base.update(facts)
    return Outcome(**base)


# -- the rows of SPEC §5, one by one ------------------------------------------------------

def test_everything_works_is_application_success():
    v = decide.decide(ran(), KEEP_GOING)
    assert (v.status, v.consistency, v.errors) == ("success", "application", ())


def test_no_configuration_is_filesystem_success_or_crash_without_freeze():
    o = Outcome(freeze=decide.FROZEN, snapshot=decide.TAKEN)
    assert decide.decide(o, KEEP_GOING)[:2] == ("success", "filesystem")
    o.freeze = decide.DISABLED
    assert decide.decide(o, KEEP_GOING)[:2] == ("success", "crash")


def test_unusable_configuration_is_filesystem_degraded():
    o = Outcome(config_error=CONFIG_INVALID.error("bad"), freeze=decide.FROZEN,
                snapshot=decide.TAKEN)
    v = decide.decide(o, KEEP_GOING)
    assert (v.status, v.consistency, codes(v)) == ("degraded", "filesystem",
                                                   ["IncorrectJSONConfigFile"])


def test_pre_script_problems_continue_true_are_filesystem_degraded():
    for state, code in ((decide.REFUSED, "Pre-ScriptNotFound"),
                        (decide.FAILED, "Pre-ScriptExecutionFailed"),
                        (decide.TIMED_OUT, "Pre-ScriptTimeout")):
        o = ran(pre=pre(state))
        assert decide.take_snapshot(o, KEEP_GOING)
        v = decide.decide(o, KEEP_GOING)
        assert (v.status, v.consistency, codes(v)) == ("degraded", "filesystem", [code])


def test_pre_script_failure_continue_false_several_disks_takes_no_snapshot():
    o = ran(pre=pre(decide.FAILED), one_disk=False)
    assert not decide.take_snapshot(o, STRICT)
    o.freeze, o.snapshot = decide.NOT_ATTEMPTED, decide.NOT_TAKEN
    assert decide.decide(o, STRICT)[:2] == ("failed", None)


def test_pre_script_failure_continue_false_one_disk_snapshots_anyway():
    o = ran(pre=pre(decide.FAILED), one_disk=True)
    assert decide.take_snapshot(o, STRICT)
    assert decide.decide(o, STRICT)[:2] == ("degraded", "filesystem")


def test_freeze_failure_is_crash_consistent_or_no_snapshot():
    o = ran(freeze=decide.FREEZE_FAILED, freeze_errors=[FS_FREEZE_FAILED.error("/data: EIO")],
            one_disk=False)
    assert decide.take_snapshot(o, KEEP_GOING) and not decide.take_snapshot(o, STRICT)
    assert decide.decide(o, KEEP_GOING)[:2] == ("degraded", "crash")


def test_deadline_during_the_snapshot_is_122_failed():
    v = decide.decide(ran(snapshot=decide.PAST_DEADLINE, thawed_early=decide.DEADLINE), KEEP_GOING)
    assert (v.status, v.consistency, codes(v)) == ("failed", None, ["FsFreezeTimeout"])
    # the guardian's thaw at the deadline, the step ending just after it
    v = decide.decide(ran(thawed_early=decide.DEADLINE), KEEP_GOING)
    assert (v.status, codes(v)) == ("failed", ["FsFreezeTimeout"])


def test_an_early_thaw_for_another_cause_is_124_with_the_cause():
    for cause, said in (("signal", "signal"), ("guardian-died", "guardian died"),
                        ("vmsnap thaw --force from another shell", "vmsnap thaw --force")):
        v = decide.decide(ran(thawed_early=cause), KEEP_GOING)
        assert (v.status, v.consistency, codes(v)) == ("failed", None, ["FsThawedEarly"])
        assert said in v.errors[0].message and v.errors[0].number == 124


def test_post_script_refused_withholds_the_pre_script_filesystem_degraded():
    o = ran(pre=pre(decide.WITHHELD), post=post(decide.REFUSED))
    v = decide.decide(o, KEEP_GOING)
    assert (v.status, v.consistency, codes(v)) == ("degraded", "filesystem",
                                                   ["Post-ScriptNotFound"])


def test_interrupted_is_402_failed():
    for where in (dict(pre=pre(decide.STOPPED), snapshot=decide.NOT_TAKEN),
                  dict(snapshot=decide.INTERRUPTED), dict(post=post(decide.OK))):
        v = decide.decide(ran(interrupted="SIGTERM", **where), KEEP_GOING)
        assert (v.status, v.consistency) == ("failed", None)
        assert codes(v)[-1] == "Interrupted" and "SIGTERM" in v.errors[-1].message


def test_snapshot_failure_is_400_failed():
    v = decide.decide(ran(snapshot=decide.STEP_FAILED,
                          snapshot_error=SNAPSHOT_FAILED.error("exit 9")), KEEP_GOING)
    assert (v.status, v.consistency, codes(v)) == ("failed", None, ["SnapshotFailed"])


def test_post_failure_leaves_the_snapshot_standing():
    for state, code in ((decide.FAILED, "Post-ScriptExecutionFailed"),
                        (decide.TIMED_OUT, "Post-ScriptTimeout")):
        assert decide.decide(ran(post=post(state)), KEEP_GOING)[:3] == (
            "degraded", "application", decide.decide(ran(post=post(state)), KEEP_GOING).errors)
        v = decide.decide(ran(post=post(state)), STRICT)
        assert (v.status, v.consistency, codes(v)) == ("failed", "application", [code])


def test_quiesce_lost_lowers_application_to_filesystem():
    v = decide.decide(ran(post=post(decide.QUIESCE_LOST)), KEEP_GOING)
    assert (v.status, v.consistency, codes(v)) == ("degraded", "filesystem",
                                                   ["Post-ScriptExecutionFailed"])


def test_a_hook_thaw_reporting_quiesce_lost_lowers_application_to_filesystem():
    for hooks_only in (False, True):
        o = ran(hooks_configured=True,
                hook_freeze=[StepFact("pre", decide.OK, "hook a freeze")],
                hook_thaw=[StepFact("post", decide.OK, "hook b thaw"),
                           StepFact("post", decide.QUIESCE_LOST, "hook a thaw", "exit 10")])
        if hooks_only:
            o.pre, o.post = pre(decide.NOT_CONFIGURED), post(decide.NOT_NEEDED)
        v = decide.decide(o, KEEP_GOING)
        assert (v.status, v.consistency) == ("degraded", "filesystem"), v
        assert codes(v) == ["Post-ScriptExecutionFailed"]
        assert "hook a thaw" in v.errors[0].message


def test_an_outcome_is_one_disk_unless_told():
    # one disk: a snapshot even after a failed pre-script under a strict policy
    o = Outcome(pre=pre(decide.FAILED), post=post(decide.OK), freeze=decide.FROZEN)
    assert o.one_disk is True and decide.take_snapshot(o, STRICT)
    o.one_disk = False
    assert not decide.take_snapshot(o, STRICT)


def test_hooks_alone_quiesce_the_application():
    o = Outcome(hooks_configured=True, hook_freeze=[StepFact("pre", decide.OK, "hook a freeze")],
                freeze=decide.FROZEN, snapshot=decide.TAKEN)
    assert decide.decide(o, KEEP_GOING).consistency == "application"
    o.hook_freeze = [StepFact("pre", decide.FAILED, "hook a freeze", "exit 1")]
    assert decide.decide(o, KEEP_GOING)[:2] == ("degraded", "filesystem")


# -- properties over every combination of facts ------------------------------------------

SCRIPT_STATES = [decide.NOT_CONFIGURED, decide.REFUSED, decide.WITHHELD, decide.OK, decide.FAILED,
                 decide.TIMED_OUT, decide.STOPPED]
POST_STATES = [decide.NOT_NEEDED, decide.REFUSED, decide.OK, decide.FAILED, decide.TIMED_OUT,
               decide.QUIESCE_LOST, decide.STOPPED]
HOOK_STATES = [decide.REFUSED, decide.OK, decide.FAILED, decide.TIMED_OUT, decide.STOPPED]
FREEZES = [decide.PENDING, decide.DISABLED, decide.NOTHING, decide.NOT_ATTEMPTED, decide.FROZEN,
           decide.FREEZE_FAILED]
SNAPSHOTS = [decide.NOT_TAKEN, decide.TAKEN, decide.STEP_FAILED, decide.PAST_DEADLINE,
             decide.INTERRUPTED]


@st.composite
def outcomes(draw):
    pre_state = draw(st.sampled_from(SCRIPT_STATES))
    snapshot = draw(st.sampled_from(SNAPSHOTS))
    freeze = draw(st.sampled_from(FREEZES))
    return Outcome(
        config_error=draw(st.none() | st.just(CONFIG_INVALID.error("bad"))),
        one_disk=draw(st.booleans()),
        hooks_configured=draw(st.booleans()),
        pre=pre(pre_state),
        hook_freeze=[StepFact("pre", s, "hook %d freeze" % i, "exit 1")
                     for i, s in enumerate(draw(st.lists(st.sampled_from(HOOK_STATES),
                                                         max_size=3)))],
        freeze=freeze,
        freeze_errors=[FS_FREEZE_FAILED.error("/m: EIO")] if freeze == decide.FREEZE_FAILED else [],
        snapshot=snapshot,
        snapshot_error=SNAPSHOT_FAILED.error("exit 1") if snapshot == decide.STEP_FAILED else None,
        thawed_early=draw(st.none() | st.sampled_from([decide.DEADLINE, "signal", "requested"])),
        hook_thaw=[StepFact("post", s, "hook %d thaw" % i, "exit 1")
                   for i, s in enumerate(draw(st.lists(st.sampled_from(
                       HOOK_STATES + [decide.QUIESCE_LOST]), max_size=3)))],
        post=post(draw(st.sampled_from(POST_STATES))),
        interrupted=draw(st.none() | st.sampled_from(["SIGINT", "SIGTERM", "SIGHUP"])),
    )


def settings_():
    return st.builds(Settings, continue_on_failure=st.booleans(),
                     freeze_timeout=st.sampled_from([0.5, 60.0]),
                     script_timeout=st.sampled_from([1.0, 30.0]))


@settings(max_examples=examples(1500), deadline=None, database=None)
@given(outcomes(), settings_())
def test_the_verdict_follows_the_table(o, s):
    before = copy.deepcopy(o)
    v = decide.decide(o, s)
    assert o == before and decide.decide(o, s) == v, "decide must be pure"
    got = codes(v)
    # one shape: each error is a known code with its number, a message and an action
    for e in v.errors:
        assert CODES[e.code].number == e.number and e.message and e.action == CODES[e.code].action
    frozen = o.freeze == decide.FROZEN
    stands = (o.snapshot == decide.TAKEN and not o.interrupted
              and not (frozen and o.thawed_early))
    # no snapshot (or one not trusted): failed, no consistency
    assert (v.consistency is None) == (not stands)
    if not stands:
        assert v.status == "failed"
    else:
        post_bad = o.post.state in (decide.REFUSED, decide.FAILED, decide.TIMED_OUT,
                                    decide.QUIESCE_LOST, decide.STOPPED)
        if post_bad and not s.continue_on_failure:
            assert v.status == "failed"
        else:
            assert v.status == ("degraded" if got else "success")
    # success only without errors
    assert v.status != "success" or not got
    # interrupted: 402 last, failed
    assert (got.count("Interrupted") == 1) == bool(o.interrupted)
    # an early thaw: 124 with its cause unless the deadline did it (122, once)
    early = frozen and o.thawed_early not in (None, decide.DEADLINE)
    assert ("FsThawedEarly" in got) == early
    deadline = (o.snapshot == decide.PAST_DEADLINE and frozen) or (
        frozen and o.thawed_early == decide.DEADLINE)
    assert got.count("FsFreezeTimeout") == (1 if deadline else 0)
    # consistency: application needs the quiesce and a freeze that held (or no freeze)
    if v.consistency == "application":
        assert o.pre.state == decide.OK or (o.pre.state == decide.NOT_CONFIGURED
                                            and o.hooks_configured)
        assert all(h.state == decide.OK for h in o.hook_freeze)
        assert o.freeze in (decide.FROZEN, decide.DISABLED, decide.NOTHING)
        assert decide.QUIESCE_LOST not in [f.state for f in [*o.hook_thaw, o.post]]
    if v.consistency == "filesystem":
        assert frozen
    if v.consistency == "crash":
        assert not frozen
    # a script's fate gives its own code, once
    expect = {decide.FAILED: "Pre-ScriptExecutionFailed", decide.TIMED_OUT: "Pre-ScriptTimeout",
              decide.REFUSED: "Pre-ScriptNotFound"}.get(o.pre.state)
    if expect:
        assert expect in got
    if o.config_error:
        assert got[0] == "IncorrectJSONConfigFile"


@settings(max_examples=examples(1000), deadline=None, database=None)
@given(outcomes(), settings_())
def test_the_snapshot_is_taken_unless_a_strict_policy_on_several_disks_says_no(o, s):
    take = decide.take_snapshot(o, s)
    if o.interrupted:
        assert not take
        return
    if s.continue_on_failure or o.one_disk:
        assert take   # continueBackupOnFailure: true, or one disk: always a snapshot
    else:
        failed = decide.scripts_failed(o) or o.freeze == decide.FREEZE_FAILED
        assert take == (not failed)
    # a post-script that cannot run never stops the snapshot (the pre-script is withheld)
    o2 = copy.deepcopy(o)
    o2.pre, o2.post = pre(decide.WITHHELD), post(decide.REFUSED)
    if not (o.hook_freeze or o.freeze == decide.FREEZE_FAILED):
        assert decide.take_snapshot(o2, s)


# -- the exact words of each error (what the user reads) ------------------------------------

def messages(verdict):
    return [(e.code, e.number, e.message) for e in verdict.errors]


def test_each_script_fate_in_words():
    s = Settings(script_timeout=2.5)
    assert decide.step_error(pre(decide.TIMED_OUT), s) == decide.SCRIPT_CODES["pre"].timeout.error(
        "/etc/pre.sh: every attempt exceeded 2.5s (exited with status 4 (attempts: 1))")
    assert decide.step_error(post(decide.FAILED), s) == decide.SCRIPT_CODES["post"].failed.error(
        "/etc/post.sh exited with status 2 (attempts: 1)")
    assert decide.step_error(post(decide.QUIESCE_LOST), s).message == (
        "/etc/post.sh reports that the application's quiesce was lost before the snapshot "
        "finished (exit 10): not application-consistent")
    assert decide.step_error(post(decide.QUIESCE_LOST), s).code == "Post-ScriptExecutionFailed"
    assert decide.step_error(pre(decide.REFUSED), s) == PRE_SCRIPT_NOT_FOUND.error(
        "/etc/pre.sh: no such file")
    for state in (decide.OK, decide.STOPPED, decide.WITHHELD, decide.NOT_CONFIGURED):
        assert decide.step_error(pre(state), s) is None
    assert decide.QUIESCE_LOST_EXIT == 10


def test_the_window_in_words():
    s = Settings(freeze_timeout=7.5)
    v = decide.decide(ran(snapshot=decide.PAST_DEADLINE), s)
    assert messages(v) == [("FsFreezeTimeout", 122, "the snapshot step was still running at the "
                            "freeze deadline (7.5s): thawed and stopped")]
    v = decide.decide(ran(snapshot=decide.PAST_DEADLINE, freeze=decide.DISABLED), s)
    assert messages(v) == [("SnapshotFailed", 400,
                            "the snapshot step exceeded 7.5s and was stopped")]
    v = decide.decide(ran(thawed_early=decide.DEADLINE), s)
    assert messages(v) == [("FsFreezeTimeout", 122,
                            "the guardian thawed at the freeze deadline (7.5s)")]
    # past the deadline and thawed by the guardian there: one error, not two
    v = decide.decide(ran(snapshot=decide.PAST_DEADLINE, thawed_early=decide.DEADLINE), s)
    assert [m[0] for m in messages(v)] == ["FsFreezeTimeout"]
    # not frozen: nothing was thawed early
    assert decide.decide(ran(freeze=decide.DISABLED, thawed_early="signal"), s).errors == ()
    assert decide.decide(ran(freeze=decide.DISABLED, thawed_early=decide.DEADLINE), s).errors == ()


@pytest.mark.parametrize("cause,words", [
    ("signal", "the guardian got a signal (`vmsnap thaw --force` sends SIGUSR1)"),
    ("requested", "a thaw was requested"),
    ("controller-died", "the guardian saw its controller die"),
    ("emergency", "the guardian died; the controller thawed"),
    ("guardian-died", "the guardian died"),
    ("something new", "something new"),
])
def test_each_early_thaw_cause_in_words(cause, words):
    v = decide.decide(ran(thawed_early=cause), KEEP_GOING)
    assert messages(v) == [("FsThawedEarly", 124, "the filesystems were thawed before the "
                            "snapshot step ended (%s): the snapshot is not trusted" % words)]


def test_interrupted_in_words_after_the_others_in_order():
    o = ran(config_error=CONFIG_INVALID.error("bad"), pre=pre(decide.FAILED),
            hook_freeze=[StepFact("pre", decide.TIMED_OUT, "hook a freeze", "attempts: 1")],
            snapshot=decide.STEP_FAILED, snapshot_error=SNAPSHOT_FAILED.error("exit 9"),
            thaw_errors=[FS_FREEZE_FAILED.error("/x: EIO")],
            hook_thaw=[StepFact("post", decide.FAILED, "hook a thaw", "exit 3")],
            post=post(decide.TIMED_OUT), interrupted="SIGHUP")
    v = decide.decide(o, Settings(script_timeout=30.0))   # shown as 30
    assert [m[0] for m in messages(v)] == [
        "IncorrectJSONConfigFile", "Pre-ScriptExecutionFailed", "Pre-ScriptTimeout",
        "SnapshotFailed", "FsFreezeFailed", "Post-ScriptExecutionFailed", "Post-ScriptTimeout",
        "Interrupted"]
    assert v.errors[-1].message == (
        "vmsnap got SIGHUP: it thawed at once, ran the thaw hooks and the post-script (if the "
        "pre-script ran); no snapshot is trusted")
    assert v.errors[2].message == "hook a freeze: every attempt exceeded 30s (attempts: 1)"


def test_the_default_settings():
    assert Settings() == Settings(continue_on_failure=True, freeze_timeout=60.0,
                                  script_timeout=30.0)
