"""Adversarial review: attacks on the verdict, the clean-up and the policy,
each tried for real (loop filesystems, real processes, an unprivileged user
where the attack is by one).  A test here either proves a defect fixed or
proves an attack refused."""

from __future__ import annotations

import os

from .conftest import frozen_state, root_only
from .helpers import codes, run_json, setup_scripts

pytestmark = root_only


# -- (c) the verdict ---------------------------------------------------------------

def test_fsfreeze_u_from_outside_during_the_snapshot_is_124(tmp_path, loopfs):
    """Someone runs `fsfreeze -u` while the snapshot step goes on: the step
    ran on a live filesystem, so the run must not say success."""
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, post="touch %s" % (tmp_path / "post-ran"))
    step = ["sh", "-c", "fsfreeze -u %s && echo hi > %s/written-mid-step" % (m, m)]
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=step)
    assert os.path.exists(m + "/written-mid-step")
    assert rc == 1 and res["status"] == "failed" and res["consistency"] is None, res
    assert codes(res) == ["FsThawedEarly"], res["errors"]
    assert m in res["errors"][0]["message"]
    assert (tmp_path / "post-ran").exists()
    assert not frozen_state(m)
