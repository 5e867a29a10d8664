#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmsnap_wait_until
short_description: Waits on the controller until an instant
version_added: "0.1.0"
description:
  - Returns at the instant I(until) (seconds since the epoch), or at once if it
    has passed. The C(vmsnap.fleet.consistency_group) role uses it between
    telling every armed host when to freeze and the snapshot step.
  - The collection's action plugin of the same name waits in the controller's
    own worker, without starting a module; run as a module it waits on the
    host it runs on (use C(delegate_to=localhost)).
options:
  until:
    description: The instant to wait for, in seconds since the epoch (the controller's clock).
    type: float
    required: true
author:
  - vmsnap developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Wait until every host has frozen at the agreed instant
  vmsnap.fleet.vmsnap_wait_until:
    until: "{{ consistency_group_instant | float + 0.5 }}"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
waited:
  description: Seconds waited.
  returned: always
  type: float
late:
  description: Seconds past I(until) when it returned (0 when it waited; more when I(until) had passed).
  returned: always
  type: float
"""

import time

from ansible.module_utils.basic import AnsibleModule


def wait_until(until):
    """Sleeps until UNTIL; returns (seconds waited, seconds late)."""
    t0 = time.time()
    now = t0
    while now < until:
        time.sleep(min(until - now, 1.0))
        now = time.time()
    return now - t0, max(0.0, now - until)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            until=dict(type="float", required=True),
        ),
        supports_check_mode=True,
    )
    waited, late = wait_until(module.params["until"])
    module.exit_json(changed=False, waited=waited, late=late)


if __name__ == "__main__":
    main()
