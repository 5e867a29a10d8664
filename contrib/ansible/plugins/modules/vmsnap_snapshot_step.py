#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmsnap_snapshot_step
short_description: The group's snapshot command, on the controller, not before an instant
version_added: "0.1.0"
description:
  - Waits until I(not_before) (seconds since the epoch) has passed, then runs
    I(argv) and returns as C(ansible.builtin.command) does (C(rc), C(stdout),
    C(stderr), C(start), C(end), C(delta); C(start) and C(end) in the same
    local-time format), so the group's verdict reads it the same way.
  - The C(vmsnap.fleet.consistency_group) role runs the snapshot step with it,
    once every host has frozen at the agreed instant. The collection's action
    plugin of the same name waits and runs the command in the controller's own
    worker, without starting a module, so the step starts when it should, not
    a Python start-up later. Run as a module it does the same on the host it
    runs on (use C(delegate_to=localhost)).
  - A non-zero exit status fails the task. In check mode nothing runs.
options:
  argv:
    description: The command and its arguments (no shell).
    type: list
    elements: str
    required: true
  not_before:
    description: The instant to wait for first (seconds since the epoch, the controller's clock); 0 for none.
    type: float
    default: 0
author:
  - vmsnap developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: The snapshot step, once every host has frozen
  vmsnap.fleet.vmsnap_snapshot_step:
    argv: [/usr/local/bin/cloud-snapshot, --group, db]
    not_before: "{{ consistency_group_instant | float + 0.5 }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
cmd:
  description: The command run.
  returned: always
  type: list
  elements: str
rc:
  description: Its exit status.
  returned: always
  type: int
stdout:
  description: Its standard output.
  returned: always
  type: str
stderr:
  description: Its standard error.
  returned: always
  type: str
start:
  description: When it started (local time, C(%Y-%m-%d %H:%M:%S.%f), as C(ansible.builtin.command)).
  returned: always
  type: str
end:
  description: When it ended (same format).
  returned: always
  type: str
delta:
  description: How long it ran.
  returned: always
  type: str
end_epoch:
  description: When it ended, in seconds since the epoch.
  returned: always
  type: float
waited:
  description: Seconds waited for I(not_before).
  returned: always
  type: float
"""

import datetime
import time

FMT = "%Y-%m-%d %H:%M:%S.%f"   # ansible.builtin.command's start and end

from ansible.module_utils.basic import AnsibleModule


def wait_until(until):
    """Sleeps until UNTIL; returns the seconds waited."""
    t0 = now = time.time()
    while now < until:
        time.sleep(min(until - now, 1.0))
        now = time.time()
    return now - t0


def main():
    module = AnsibleModule(
        argument_spec=dict(
            argv=dict(type="list", elements="str", required=True),
            not_before=dict(type="float", default=0),
        ),
        supports_check_mode=True,
    )
    argv = module.params["argv"]
    if not argv:
        module.fail_json(msg="argv is empty")
    if module.check_mode:   # a snapshot is never taken in check mode
        module.exit_json(changed=True, cmd=argv, msg="would run the snapshot step")
    waited = wait_until(module.params["not_before"])
    start = datetime.datetime.now()
    rc, out, err = module.run_command(argv)
    end = datetime.datetime.now()
    res = dict(cmd=argv, rc=rc, stdout=out, stderr=err, changed=True, waited=waited,
               start=start.strftime(FMT), end=end.strftime(FMT), delta=str(end - start),
               end_epoch=time.mktime(end.timetuple()) + end.microsecond / 1e6)
    if rc != 0:
        module.fail_json(msg="non-zero return code", **res)
    module.exit_json(**res)


if __name__ == "__main__":
    main()
