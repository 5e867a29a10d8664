# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT
"""Waits in the controller's worker until ``not_before``, then runs the
snapshot command from there: no module starts between the hosts' freeze
and the step, and the result reads as ``ansible.builtin.command``'s."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible_collections.vmsnap.fleet.plugins.action.vmsnap import run_step


class ActionModule(ActionBase):
    _supports_check_mode = True
    _supports_async = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super(ActionModule, self).run(tmp, task_vars)
        argv = self._task.args.get("argv")
        if not isinstance(argv, list) or not argv:
            raise AnsibleActionFail("argv: give the snapshot command as a non-empty list")
        argv = [to_text(a) for a in argv]
        if self._task.check_mode:   # a snapshot is never taken in check mode
            result.update(changed=True, cmd=argv, msg="would run the snapshot step")
            return result
        try:
            until = float(self._task.args.get("not_before") or 0)
        except (TypeError, ValueError):
            raise AnsibleActionFail("not_before: an instant in seconds since the epoch")
        # the wait on the monotonic clock: a step of the wall clock meanwhile
        # moves neither the instant nor when the step runs
        result.update(run_step(argv, until))
        return result
