#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmsnap_group_verdict
short_description: The consistency of a group snapshot taken across many hosts
version_added: "0.1.0"
description:
  - Runs on the controller after the C(vmsnap.fleet.consistency_group) role's
    C(arm) (or C(begin)), snapshot and C(end) steps and says what the group's
    snapshot is. For an armed host, when it froze comes from its C(end); a host
    told too late (or never) to freeze did not freeze, and its run says why.
  - The group is B(application)-consistent only if every host's freeze window
    covered the snapshot step, in wall-clock time on the controller's clock
    (each host's times are moved by its measured clock offset, with the
    offset's uncertainty counted against the host), every host's
    pre-script succeeded and every host's own run ended in C(success). If
    every window covered it but some pre-script did not run or failed, or a
    host's own run reported an error (its post-script said the quiesce was
    lost, exit 10, say), the group is at best B(filesystem)-consistent, and
    the verdict names the host and why. A host whose own run failed breaks
    the group as one that did not freeze does.
  - Otherwise it names the hosts that broke it (did not freeze, thawed early,
    unreachable so that the window cannot be confirmed) and the group is
    B(crash)-consistent (status C(degraded)) when I(continue_on_failure) is
    true, or B(failed) when it is false.
  - No snapshot, or a failed snapshot step, is C(failed).
options:
  hosts:
    description: The group's hosts, in order.
    type: list
    elements: str
    required: true
  begin:
    description: The registered results of C(vmsnap command=arm) (or C(begin)), one per host (null when missing).
    type: list
    elements: raw
    required: true
  end:
    description: The registered results of C(vmsnap command=end), one per host (null when missing).
    type: list
    elements: raw
    required: true
  clocks:
    description:
      - More clock measurements, one per host (null when missing), as registered from
        C(vmsnap command=clock), taken after the arm and before the freeze. A
        host is judged with this reading (or its arm's, when it has none) and
        its end's, and the worse of the two is kept, so that a clock stepped
        meanwhile cannot make a late freeze look covered.
    type: list
    elements: raw
    default: []
  released:
    description:
      - The registered results of C(vmsnap command=release), one per host (null
        when missing, or a list of several), run after the snapshot step (or
        running it, with I(step)). A host whose C(release) (or
        whose C(end)'s own release) says C(released), sent after the step ended
        on the controller's clock, thawed after the step ended, since the host's
        wait step holds the freeze until the release arrives. For such a host the
        end of the window needs no clock offset; for any other, its
        C(released_at) is moved by its offsets, with their uncertainty.
    type: list
    elements: raw
    default: []
  snapshot:
    description: The registered result of the snapshot step (C(ansible.builtin.command) on the controller).
    type: raw
  continue_on_failure:
    description: The group's C(continueBackupOnFailure).
    type: bool
    default: true
author:
  - vmsnap developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: The group's verdict
  vmsnap.fleet.vmsnap_group_verdict:
    hosts: "{{ ansible_play_hosts_all }}"
    begin: "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='consistency_group_begin') | map('default', None) | list }}"
    end: "{{ ansible_play_hosts_all | map('extract', hostvars) | map(attribute='consistency_group_end') | map('default', None) | list }}"
    snapshot: "{{ consistency_group_snapshot | default(None) }}"
    continue_on_failure: true
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
status:
  description: C(success), C(degraded) or C(failed), as for one host.
  returned: always
  type: str
consistency:
  description: C(application), C(filesystem), C(crash), or null (no usable snapshot).
  returned: always
  type: str
broken_by:
  description: The hosts whose freeze did not (or cannot be shown to) cover the snapshot step.
  returned: always
  type: list
  elements: str
hosts:
  description:
    - Per host, whether its window covered the step (C(covered)) and why
      (C(reason)), its window on the controller's clock (C(frozen_from),
      C(frozen_until), C(lease_ends_by)), what proves its window's end
      (C(frozen_until_by), either C(release), the controller's release sent
      after the step, or C(clock), its offsets), its C(clock), whether its pre-script
      succeeded (C(pre_script_ok)), its own run's C(host_status) and
      C(host_consistency), C(own_cap) (the best consistency its own run allows,
      as 2 application, 1 filesystem, 0 crash, null none) and C(own_why) (why
      its own run keeps the group below application, null when it does not).
  returned: always
  type: dict
msg:
  description: The verdict in a sentence, naming each host that lowered it and why.
  returned: always
  type: str
snapshot:
  description: The snapshot step's start and end (controller clock, epoch seconds) and exit status.
  returned: always
  type: dict
"""

import datetime

from ansible.module_utils.basic import AnsibleModule

RANK = {"application": 2, "filesystem": 1, "crash": 0}


def command_time(text):
    """ansible.builtin.command's start/end: the controller's local time."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").timestamp()


def snapshot_facts(snap):
    if not isinstance(snap, dict) or not snap or snap.get("skipped"):
        return {"ran": False, "ok": False, "why": (snap or {}).get("skip_reason", "not run")
                if isinstance(snap, dict) else "not run"}
    facts = {"ran": True, "rc": snap.get("rc"), "start": None, "end": None}
    epochs = (snap.get("start_epoch"), snap.get("end_epoch"))
    if all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in epochs):
        # the role's step says when it ran in seconds since the epoch: no local
        # time to read back (in the hour a DST change repeats, that is an hour off)
        facts["start"], facts["end"] = float(epochs[0]), float(epochs[1])
    else:
        try:
            facts["start"], facts["end"] = command_time(snap["start"]), command_time(snap["end"])
        except (KeyError, TypeError, ValueError):
            pass
    facts["ok"] = (not snap.get("failed") and snap.get("rc") == 0
                   and facts["start"] is not None)
    return facts


def clocks_of(*results):
    """Every offset measured on this host (begin's, the clock task's, end's)."""
    clocks = [r.get("clock") for r in results if isinstance(r, dict)]
    return [c for c in clocks if isinstance(c, dict) and c.get("offset") is not None
            and c.get("uncertainty") is not None]


def clock_of(*results):
    """The tightest offset measured on this host (begin's or end's)."""
    clocks = clocks_of(*results)
    return min(clocks, key=lambda c: c["uncertainty"]) if clocks else None


def own_result(end, snap):
    """What the host's own run says about its part: (the best consistency
    it allows the group, as a RANK, or None for none at all; why)."""
    status, consistency = end.get("status"), end.get("consistency")
    errors = [e for e in end.get("errors") or [] if isinstance(e, dict)]
    if not snap.get("ok"):
        # the group's step failed (the group fails for it): each host records
        # SnapshotFailed for it, and only its other errors are its own
        errors = [e for e in errors if e.get("code") != "SnapshotFailed"]
        if not errors:
            return RANK["application"], None
    if status == "success" and not errors:
        return RANK.get(consistency, 0), None
    codes = ", ".join("%s (%s)" % (e.get("code"), e.get("message")) for e in errors)
    why = "its own run is %s, %s%s" % (
        status, "%s-consistent" % consistency if consistency else "no usable snapshot",
        ": " + codes if codes else "")
    if status == "failed" or consistency not in RANK:
        return None, why
    # any error of its own: the group is not application-consistent on its word
    return min(RANK[consistency], RANK["filesystem"]), why


def release_sent_at(snap, *results):
    """When the controller sent this host a release that the host took (state
    "released"), after the snapshot step ended, on the controller's clock; or
    None. The host's wait step ends only once a release has arrived, so a
    covered host thawed after this instant, whatever its clock says."""
    end_of_step = snap.get("end")
    flat = []
    for res in results:   # a host's entry in `released` may list several results
        flat.extend(res if isinstance(res, list) else [res])
    for res in flat:
        rel = res.get("release") if isinstance(res, dict) else None
        if not isinstance(rel, dict) or rel.get("state") != "released":
            continue
        sent = rel.get("sent_at")
        if isinstance(sent, (int, float)) and end_of_step is not None and sent >= end_of_step:
            return float(sent)
    return None


def host_verdict(name, begin, end, snap, more_clock=None, released=None):
    """(covered, reason, details) for one host."""
    info = {"host": name}
    if not isinstance(begin, dict) or begin.get("skipped"):
        return False, "never began (no freeze)", info
    if begin.get("unreachable"):
        return False, "unreachable before the freeze: %s" % begin.get("msg", ""), info
    # armed (command=arm): it froze, if at all, at the instant it was told; its
    # end says when. Otherwise (command=begin) it was frozen when begin returned.
    armed = begin.get("armed_at") is not None and not begin.get("failed")
    if begin.get("failed") or (not armed and begin.get("frozen_at") is None):
        return False, "did not freeze: %s" % begin.get("msg", "no reason given"), info
    # a clock stepped between two measurements makes them disagree: the host
    # is judged with each, and the worst case is kept. The clock task's
    # reading comes after the arm's and before the freeze: where it exists,
    # the arm's (older, taken while every host ran its module) says nothing
    # of the window that it does not
    later = clocks_of(more_clock)
    clocks = clocks_of(more_clock, end) if later else clocks_of(begin, end)
    clock = clock_of(begin, end, more_clock)
    info["clock"] = clock
    if clock is None:
        return False, "its clock offset to the controller could not be measured", info
    unc = clock["uncertainty"]
    frozen_at = begin.get("frozen_at")
    if armed:
        frozen_at = end.get("frozen_at") if isinstance(end, dict) else None
    if frozen_at is not None:
        info["frozen_from"] = max(frozen_at - c["offset"] + c["uncertainty"]
                                  for c in clocks)         # latest it can have been
    if armed and isinstance(end, dict) and end.get("clock_stepped"):
        # its wall clock stepped while it froze: its frozen_at is on another clock
        # than every offset measured before or after
        return False, ("its wall clock moved by %+.3fs between arming and the end of its "
                       "freeze (a clock step): when it froze cannot be told"
                       % (end.get("clock_moved") or 0.0)), info
    if begin.get("lease_deadline") is not None:
        info["lease_ends_by"] = max(begin["lease_deadline"] - c["offset"] + c["uncertainty"]
                                    for c in clocks)
    elif armed and frozen_at is not None and begin.get("lease") is not None:
        info["lease_ends_by"] = info["frozen_from"] + begin["lease"] + 2 * unc
    if not isinstance(end, dict) or end.get("unreachable") or end.get("skipped"):
        why = (end or {}).get("msg", "no result") if isinstance(end, dict) else "no result"
        bound = ""
        if info.get("lease_ends_by") is not None:
            bound = " (its lease thaws it by %.3f on the controller's clock)" % info["lease_ends_by"]
        return False, "unreachable after the freeze%s: its window could not be confirmed%s: %s" % (
            " instant" if armed else "", bound, why), info
    if armed and frozen_at is None and not snap.get("ran"):
        # armed, then told not to freeze (or never told): nothing was taken, nothing broken here
        info["host_status"], info["host_consistency"] = end.get("status"), end.get("consistency")
        return True, "armed; not frozen, as no snapshot step ran", info
    info["host_status"], info["host_consistency"] = end.get("status"), end.get("consistency")
    info["own_cap"], info["own_why"] = own_result(end, snap)
    pre = end.get("pre_script") or {}
    info["pre_script_ok"] = bool(pre.get("ran") and pre.get("exit_code") == 0
                                 and not pre.get("timed_out"))
    if not end.get("covered") or end.get("released_at") is None:
        errors = [e for e in end.get("errors", []) if isinstance(e, dict)]
        codes = ", ".join("%s (%s)" % (e.get("code"), e.get("message")) for e in errors)
        if any(e.get("code") == "FsFreezeFailed" for e in errors):
            return False, "did not freeze: %s" % codes, info
        return False, "thawed before the snapshot step ended: %s" % (codes or end.get("msg")), info
    info["frozen_until"] = min(end["released_at"] - c["offset"] - c["uncertainty"]
                               for c in clocks)            # earliest it can have been
    info["frozen_until_by"] = "clock"
    sent = release_sent_at(snap, released, end)
    if sent is not None:   # by causality: not before the release (itself after the step)
        info["frozen_until"] = max(info["frozen_until"], sent)
        info["frozen_until_by"] = "release"
    if not snap.get("ran") or snap.get("start") is None:
        return True, "frozen", info
    if not clocks_of(end):
        # no reading after the freeze: a step during the window would not show
        return False, ("its clock offset could not be measured after the freeze: a clock "
                       "step during its window would not show"), info
    if info["frozen_from"] > snap["start"]:
        return False, ("froze at %.3f, after the snapshot step began at %.3f (clock uncertainty "
                       "%.3fs)" % (info["frozen_from"], snap["start"], unc)), info
    if info["frozen_until"] < snap["end"]:
        return False, ("thawed at %.3f, before the snapshot step ended at %.3f (clock "
                       "uncertainty %.3fs)" % (info["frozen_until"], snap["end"], unc)), info
    if info["own_cap"] is None:
        return False, info["own_why"], info
    return True, "frozen from before the snapshot step to after it", info


def group_verdict(hosts, begin, end, snapshot, continue_on_failure, clocks=(), released=()):
    """The group's verdict as a dict (the module's result without changed/failed)."""
    snap = snapshot_facts(snapshot)
    per_host, broken = {}, []
    for i, name in enumerate(hosts):
        b = begin[i] if i < len(begin) else None
        e = end[i] if i < len(end) else None
        c = clocks[i] if i < len(clocks) else None
        r = released[i] if i < len(released) else None
        covered, reason, info = host_verdict(name, b, e, snap, c, r)
        info.update(covered=covered, reason=reason)
        per_host[name] = info
        if not covered:
            broken.append(name)
    out = {"hosts": per_host, "broken_by": broken,
           "snapshot": {k: snap.get(k) for k in ("ran", "ok", "rc", "start", "end")}}
    why_broken = "; ".join("%s: %s" % (h, per_host[h]["reason"]) for h in broken)
    if not snap["ran"]:
        out.update(status="failed", consistency=None,
                   msg="no snapshot was taken (%s)%s" % (
                       snap.get("why"), "; " + why_broken if broken else ""))
    elif not snap["ok"]:
        out.update(status="failed", consistency=None,
                   msg="the snapshot step failed (exit %s): the group has no snapshot" % snap.get("rc"))
    elif broken:
        if continue_on_failure:
            out.update(status="degraded", consistency="crash",
                       msg="crash-consistent: the freeze did not cover the snapshot step on %s"
                       % why_broken)
        else:
            out.update(status="failed", consistency=None,
                       msg="failed (continueBackupOnFailure is false): the freeze did not cover "
                       "the snapshot step on %s" % why_broken)
    else:
        def rank(h):
            mine = RANK["application"] if per_host[h].get("pre_script_ok") else RANK["filesystem"]
            own = per_host[h].get("own_cap")
            return mine if own is None else min(mine, own)

        low = min(rank(h) for h in hosts) if hosts else RANK["filesystem"]
        consistency = {v: k for k, v in RANK.items()}[low]
        # each host below application, with why: its pre-script, its own result
        below = {}
        for h in hosts:
            whys = []
            if not per_host[h].get("pre_script_ok"):
                whys.append("the pre-script did not succeed")
            if per_host[h].get("own_why"):
                whys.append(per_host[h]["own_why"])
            if whys:
                below[h] = "; ".join(whys)
        named = "; ".join("%s: %s" % (h, why) for h, why in below.items())
        if below and not continue_on_failure:
            # as one host with several disks: a script failure fails the backup
            out.update(status="failed", consistency=None, broken_by=list(below),
                       msg="failed (continueBackupOnFailure is false): %s" % named)
            return out
        out.update(status="success" if consistency == "application" and not below
                   else "degraded", consistency=consistency,
                   msg="%s-consistent: every host's freeze covered the snapshot step%s" % (
                       consistency, "; but %s" % named if below else ""))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            hosts=dict(type="list", elements="str", required=True),
            begin=dict(type="list", elements="raw", required=True),
            end=dict(type="list", elements="raw", required=True),
            clocks=dict(type="list", elements="raw", default=[]),
            released=dict(type="list", elements="raw", default=[]),
            snapshot=dict(type="raw"),
            continue_on_failure=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, status="skipped", consistency=None, broken_by=[],
                         hosts={}, snapshot={}, msg="check mode: no snapshot taken")
    out = group_verdict(p["hosts"], p["begin"], p["end"], p["snapshot"],
                        p["continue_on_failure"], p["clocks"], p["released"])
    if out["status"] == "failed":
        module.fail_json(**out)
    module.exit_json(changed=False, **out)


if __name__ == "__main__":
    main()
