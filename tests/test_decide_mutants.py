"""Rows of the decision table the property tests reach only by luck: hooks
under a strict policy, a freeze asked not to run, the agent's deadline in
words.  Pure functions: no root, no filesystem."""

from __future__ import annotations

from vmsnap_native import decide
from vmsnap_native.decide import Outcome, Settings, StepFact

STRICT = Settings(continue_on_failure=False)


def several_disks(**kw) -> Outcome:
    o = Outcome(one_disk=False, pre=StepFact("pre", decide.OK, "/etc/pre.sh"),
                post=StepFact("post", decide.OK, "/etc/post.sh"), freeze=decide.FROZEN)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_hooks_that_froze_well_let_a_strict_backup_of_several_disks_go_on():
    good = [StepFact("pre", decide.OK, "hook a freeze"), StepFact("pre", decide.OK, "hook b freeze")]
    assert decide.take_snapshot(several_disks(hook_freeze=good), STRICT)
    bad = [good[0], StepFact("pre", decide.FAILED, "hook b freeze", "exited with status 1")]
    assert not decide.take_snapshot(several_disks(hook_freeze=bad), STRICT)
    assert decide.take_snapshot(several_disks(hook_freeze=bad), Settings())


def test_without_a_freeze_the_application_quiesce_alone_decides():
    """fsFreezeEnabled false, or nothing to freeze: a quiesced application is
    application-consistent; with no quiesce at all the snapshot is crash-consistent."""
    for freeze in (decide.DISABLED, decide.NOTHING):
        o = several_disks(freeze=freeze, snapshot=decide.TAKEN)
        assert decide.decide(o, Settings()) == ("success", "application", ())
        o = several_disks(freeze=freeze, snapshot=decide.TAKEN,
                          pre=StepFact("pre", decide.NOT_CONFIGURED),
                          post=StepFact("post", decide.NOT_CONFIGURED))
        assert decide.decide(o, Settings()) == ("success", "crash", ())


def test_the_agents_deadline_in_words():
    o = several_disks(freeze=decide.AGENT_FROZE, snapshot=decide.PAST_DEADLINE)
    v = decide.decide(o, Settings(freeze_timeout=7))
    assert [(e.code, e.message) for e in v.errors] == [(
        "FsFreezeTimeout",
        "the agent's last call did not come within freezeTimeoutInSeconds (7s): vmsnap thawed "
        "every filesystem the agent could have frozen")]
