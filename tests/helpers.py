"""Helpers for framework tests: root-owned scripts and configs, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def write_script(path, body, mode=0o700, shebang="#!/bin/sh"):
    path = str(path)
    with open(path, "w") as f:
        f.write("%s\n%s\n" % (shebang, body) if shebang else body + "\n")
    os.chmod(path, mode)
    return path


def write_config(path, mode=0o600, **fields):
    path = str(path)
    with open(path, "w") as f:
        json.dump(fields, f)
    os.chmod(path, mode)
    return path


def setup_scripts(tmp_path, pre="exit 0", post="exit 0", **fields):
    """A config with a pre- and a post-script in TMP_PATH/etc (all root, 700/600)."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    os.chmod(etc, 0o755)
    pre_path = write_script(etc / "pre.sh", pre)
    post_path = write_script(etc / "post.sh", post)
    cfg = {"pluginName": "ScriptRunner", "preScriptLocation": pre_path,
           "postScriptLocation": post_path, "preScriptParams": [], "postScriptParams": [],
           "preScriptNoOfRetries": 0, "postScriptNoOfRetries": 0, "timeoutInSeconds": 10,
           "continueBackupOnFailure": True, "fsFreezeEnabled": True,
           "hooksDirectory": str(tmp_path / "no-hooks")}
    cfg.update(fields)
    return write_config(etc / "config.json", **cfg)


def vmsnap(*args, timeout=120, env=None, input=None):
    """Runs `python -m vmsnap_native ARGS`; returns CompletedProcess (text)."""
    e = dict(os.environ)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "vmsnap_native", *args], capture_output=True,
                          text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)


def run_json(tmp_path, config, mounts, snapshot=(), extra=(), env=None, timeout=120):
    """`vmsnap run --json` with an explicit mount list; returns (exit status, result dict, proc)."""
    args = ["run", "--json", "--log-file", os.path.join(str(tmp_path), "vmsnap.log")]
    if config is not None:
        args += ["--config", str(config)]
    for m in mounts:
        args += ["--mount", m]
    args += list(extra)
    if snapshot:
        args += ["--", *snapshot]
    p = vmsnap(*args, env=env, timeout=timeout)
    try:
        res = json.loads(p.stdout)
    except ValueError:
        raise AssertionError("stdout is not one JSON object:\n%s\nstderr:\n%s"
                             % (p.stdout, p.stderr)) from None
    return p.returncode, res, p


def codes(res):
    return [e["code"] for e in res["errors"]]
