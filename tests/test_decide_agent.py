"""The verdict of an agent's snapshot where the agent froze (no root needed)."""

from vmsnap_native import decide
from vmsnap_native.decide import Outcome, Settings, StepFact


def agent_outcome(**kw) -> Outcome:
    o = Outcome(pre=StepFact("pre", decide.OK, "/etc/pre.sh"),
                post=StepFact("post", decide.OK, "/etc/post.sh"),
                freeze=decide.AGENT_FROZE, snapshot=decide.TAKEN)
    for k, v in kw.items():
        setattr(o, k, v)
    return o


def test_the_agents_freeze_counts_as_the_freeze():
    v = decide.decide(agent_outcome(), Settings())
    assert (v.status, v.consistency, v.errors) == ("success", "application", ())
    v = decide.decide(agent_outcome(pre=StepFact("pre", decide.FAILED, "/etc/pre.sh", "x")),
                      Settings())
    assert (v.status, v.consistency) == ("degraded", "filesystem")


def test_no_last_call_by_the_deadline_is_122_and_says_what_was_thawed():
    v = decide.decide(agent_outcome(snapshot=decide.PAST_DEADLINE), Settings(freeze_timeout=7))
    assert v.status == "failed" and v.consistency is None
    assert [e.code for e in v.errors] == ["FsFreezeTimeout"]
    assert "last call did not come" in v.errors[0].message and "(7s)" in v.errors[0].message
    assert "every filesystem the agent could have frozen" in v.errors[0].message
