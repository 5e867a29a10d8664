"""pytest-benchmark micro-benchmarks of the hot Python paths, so that
regressions show: configuration parsing, mountinfo parsing and selection."""

from __future__ import annotations

import json

from vmsnap_native import mountinfo
from vmsnap_native.config import parse_config

CONFIG = json.dumps({
    "pluginName": "ScriptRunner", "preScriptLocation": "/etc/vmsnap/pre.sh",
    "postScriptLocation": "/etc/vmsnap/post.sh", "preScriptParams": ["a", "b"],
    "postScriptParams": [], "preScriptNoOfRetries": 1, "postScriptNoOfRetries": 1,
    "timeoutInSeconds": 30, "continueBackupOnFailure": True, "fsFreezeEnabled": True,
    "freezeTimeoutInSeconds": 20, "mountsToSkip": ["/boot*"]}).encode()

MOUNTINFO = "\n".join(
    ["22 1 0:21 / /proc rw,relatime - proc proc rw",
     "27 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw"] +
    ["%d 27 8:%d / /srv/data\\040%d rw,noatime shared:%d - xfs /dev/sdb%d rw,attr2"
     % (100 + i, 16 + i, i, i, i) for i in range(100)] +
    ["%d 27 0:%d / /run/user/%d rw - tmpfs tmpfs rw" % (300 + i, 60 + i, i) for i in range(100)])


def test_config_parse(benchmark):
    cfg = benchmark(parse_config, CONFIG, "bench.json")
    assert cfg.timeout == 30.0


def test_mountinfo_parse(benchmark):
    mounts = benchmark(mountinfo.parse_mountinfo, MOUNTINFO)
    assert len(mounts) == 202


def test_mountinfo_select(benchmark):
    mounts = mountinfo.parse_mountinfo(MOUNTINFO)
    sel = benchmark(mountinfo.select, mounts, None, ("/boot*",), "/nonexistent")
    assert len(sel.eligible) == 101
