"""Process supervision: exit codes, signals, exec failures, timeouts that
stop the whole group, bounded output, background children, the fallback."""

from __future__ import annotations

import os
import stat
import time

import pytest

from vmsnap_native import policy, run_process

from .conftest import live_in_group

BOTH = pytest.mark.parametrize("fallback", [False, True], ids=["pidfd", "fallback"])
# set by test_fallbacks.py, which runs this file again with every newer path off
ALL_FALLBACKS = bool(os.environ.get("VMSNAP_FALLBACK_RUN"))


@BOTH
def test_exit_code_and_output(fallback):
    r = run_process(["sh", "-c", "echo out; echo err >&2; exit 7"], timeout=5,
                    force_fallback=fallback)
    assert r.exit_code == 7 and r.signal is None and not r.timed_out
    assert "out" in r.output and "err" in r.output
    assert r.used_fallback is (fallback or ALL_FALLBACKS)
    assert not r.ok


@BOTH
def test_death_by_signal(fallback):
    r = run_process(["sh", "-c", "kill -9 $$"], timeout=5, force_fallback=fallback)
    assert r.exit_code is None and r.signal == 9
    assert "SIGKILL" in r.describe()


def test_not_found_and_not_executable(tmp_path):
    r = run_process([str(tmp_path / "missing")], timeout=5)
    assert r.exit_code == 127 and r.spawn_error and "No such file" in r.spawn_error
    f = tmp_path / "noexec"
    f.write_text("#!/bin/sh\necho hi\n")
    f.chmod(0o644)
    r = run_process([str(f)], timeout=5)
    assert r.exit_code == 126 and "Permission denied" in r.spawn_error
    assert "could not be executed" in r.describe()


def test_stdin_is_dev_null_and_environment_is_clean(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/evil.so")
    monkeypatch.setenv("PYTHONPATH", "/evil")
    r = run_process(["sh", "-c", "cat; env"], timeout=5)
    assert r.exit_code == 0
    assert "LD_PRELOAD" not in r.output and "PYTHONPATH" not in r.output
    # the standard directories that pass the policy (all six here; fewer in a sysroot)
    path = [line[5:] for line in r.output.splitlines() if line.startswith("PATH=")]
    assert path == [policy.trusted_search_path()] and "/usr/bin" in path[0].split(":")


def test_own_session_and_default_signals():
    # the shell reads its own status with builtins: a forked reader could catch
    # it inside fork(), around which dash blocks every signal for a moment
    r = run_process(["sh", "-c", "ps -o pid=,sid=,pgid= -p $$; "
                     "while read -r k v; do case $k in SigBlk:|SigIgn:) printf '%s\\t%s\\n' $k $v;; "
                     "esac; done < /proc/$$/status"], timeout=5)
    pid, sid, pgid = r.output.split()[:3]
    assert pid == sid == pgid
    masks = dict(line.split(":\t") for line in r.output.splitlines()[1:])
    assert int(masks["SigBlk"], 16) == 0
    # no standard signal ignored (1..31; glibc keeps its internal 32/33 to itself)
    assert int(masks["SigIgn"], 16) & 0x7FFFFFFF == 0


def test_arguments_are_separate_with_spaces_intact():
    r = run_process(["sh", "-c", 'for a in "$@"; do echo "[$a]"; done', "sh", "a b", "", "c"],
                    timeout=5)
    assert r.output.splitlines() == ["[a b]", "[]", "[c]"]


@pytest.mark.timing
@BOTH
def test_timeout_kills_whole_group_including_term_ignoring_grandchild(fallback, tmp_path):
    pidfile = tmp_path / "gc.pid"
    script = ("sh -c \"trap '' TERM; echo \\$\\$ > %s; while :; do sleep 1; done\" & sleep 60"
              % pidfile)
    t0 = time.monotonic()
    r = run_process(["sh", "-c", script], timeout=0.5, grace=0.3, force_fallback=fallback)
    elapsed = time.monotonic() - t0
    assert r.timed_out and r.signal in (15, 9)
    assert 0.5 <= elapsed < 3
    gc = int(pidfile.read_text())
    # the grandchild ignored SIGTERM; SIGKILL after the grace got it
    assert gc not in live_in_group(gc) and r.survivors == 0


@pytest.mark.timing
def test_timeout_of_stopped_child():
    # SIGCONT goes with SIGTERM, so a stopped child dies without waiting for SIGKILL
    t0 = time.monotonic()
    r = run_process(["sh", "-c", "kill -STOP $$; sleep 30"], timeout=0.3, grace=10)
    assert r.timed_out and r.signal == 15
    assert time.monotonic() - t0 < 3


@BOTH
def test_large_output_bounded_not_blocked(fallback):
    r = run_process(["sh", "-c", "head -c 10000000 /dev/zero | tr '\\0' x; echo; echo END"],
                    timeout=20, output_limit=4096, force_fallback=fallback)
    assert r.exit_code == 0
    assert r.output_truncated and r.output_bytes >= 10_000_000
    assert r.output.startswith("x" * 100) and r.output.rstrip().endswith("END")
    assert len(r.output) < 4096 + 100


@pytest.mark.timing
@BOTH
def test_background_child_holding_pipe_does_not_delay_return(fallback):
    t0 = time.monotonic()
    r = run_process(["sh", "-c", "sleep 5 & echo started"], timeout=10,
                    force_fallback=fallback)
    elapsed = time.monotonic() - t0
    assert r.exit_code == 0 and "started" in r.output
    assert elapsed < 2, "waited for the background child's output to close"


def test_cwd_and_env_are_passed(tmp_path):
    r = run_process(["sh", "-c", "pwd; echo $FOO"], timeout=5, cwd=tmp_path,
                    env={"PATH": "/usr/bin:/bin", "FOO": "bar"})
    assert r.output.split() == [str(tmp_path), "bar"]


def test_shebang_is_honoured(tmp_path):
    f = tmp_path / "s.py"
    f.write_text("#!/usr/bin/env python3\nimport sys; print('py', sys.argv[1:])\n")
    f.chmod(stat.S_IRWXU)
    r = run_process([str(f), "x"], timeout=10)
    assert r.output.strip() == "py ['x']"
