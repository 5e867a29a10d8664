# -*- coding: utf-8 -*-
# Copyright: vmsnap developers
# MIT License (see https://opensource.org/licenses/MIT)
# SPDX-License-Identifier: MIT
"""Waits in the controller's worker until ``not_before``, then runs the
snapshot command from there: no module starts between the hosts' freeze
and the step, and the result reads as ``ansible.builtin.command``'s."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import subprocess
import time

FMT = "%Y-%m-%d %H:%M:%S.%f"   # ansible.builtin.command's start and end

from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase


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
        t0 = time.monotonic()
        target = t0 + (until - time.time())
        now = t0
        while now < target:
            time.sleep(min(target - now, 1.0))
            now = time.monotonic()
        start = datetime.datetime.now()
        try:
            p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, check=False)
            rc, out, err = p.returncode, p.stdout, p.stderr
        except OSError as exc:
            rc, out, err = 2, b"", to_text(exc).encode("utf-8")
        end = datetime.datetime.now()
        result.update(cmd=argv, rc=rc, stdout=to_text(out, errors="surrogate_or_replace"),
                      stderr=to_text(err, errors="surrogate_or_replace"), changed=True,
                      waited=now - t0, start=start.strftime(FMT), end=end.strftime(FMT), delta=str(end - start),
                      end_epoch=time.mktime(end.timetuple()) + end.microsecond / 1e6)
        if rc != 0:
            result.update(failed=True, msg="non-zero return code")
        return result
