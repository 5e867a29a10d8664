# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT
"""Waits in the controller's worker until ``until``: no module starts, so
the wait ends when it should, not a Python start-up later."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        try:
            until = float(self._task.args["until"])
        except (KeyError, TypeError, ValueError):
            raise AnsibleActionFail("until: give the instant to wait for, in seconds since the epoch")
        t0 = now = time.time()
        while now < until:
            time.sleep(min(until - now, 1.0))
            now = time.time()
        result.update(changed=False, waited=now - t0, late=max(0.0, now - until))
        return result
