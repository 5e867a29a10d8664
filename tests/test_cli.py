"""The other commands (check, mounts, freeze, thaw), the run lock, crash
recovery, and the Python API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import vmsnap_native as vmsnap

from .conftest import frozen_state, resumes_done, root_only, thawed_soon
from .helpers import codes, run_json, setup_scripts, write_config
from .helpers import vmsnap as cli

pytestmark = root_only


def test_check_reports_every_problem_with_action(tmp_path):
    cfg = setup_scripts(tmp_path)
    p = cli("check", "--config", cfg, "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["ok"] is True
    assert "all good" in p.stderr
    os.chmod(tmp_path / "etc" / "pre.sh", 0o777)
    os.unlink(tmp_path / "etc" / "post.sh")
    p = cli("check", "--config", cfg, "--json")
    report = json.loads(p.stdout)
    assert p.returncode == 1
    assert [x["code"] for x in report["problems"]] == ["InsufficientPermissionforPre-Script",
                                                       "Post-ScriptNotFound"]
    assert all(x["action"] for x in report["problems"])
    assert "chmod 700" in p.stderr and "-> put the script at the configured path" in p.stderr


def test_check_without_config_is_fine_and_bad_config_is_not(tmp_path):
    p = cli("check", "--config", str(tmp_path / "absent.json"))
    assert p.returncode == 0 and "no configuration file" in p.stderr
    bad = write_config(tmp_path / "bad.json", mode=0o644, preScriptLocation="/x",
                       postScriptLocation="/y")
    p = cli("check", "--config", bad, "--json")
    assert p.returncode == 1
    assert json.loads(p.stdout)["problems"][0]["number"] == 317


def test_mounts_lists_reasons(loopfs):
    (m,) = loopfs.make(1)
    p = cli("mounts", "--json", "--mount", m)
    d = json.loads(p.stdout)
    assert p.returncode == 0
    assert [c["mountpoint"] for c in d["eligible"]] == [m]
    reasons = {c["mountpoint"]: c["reason"] for c in d["skipped"]}
    assert "pseudo" in reasons["/proc"]
    p = cli("mounts")
    assert "would freeze" in p.stdout and "left out" in p.stdout and "/proc" in p.stdout


def test_freeze_then_thaw(loopfs):
    mounts = loopfs.make(2)
    args = ["freeze", "--timeout", "30", "--json"]
    for m in mounts:
        args += ["--mount", m]
    t0 = time.monotonic()
    p = cli(*args)
    assert time.monotonic() - t0 < 10, "vmsnap freeze did not return once frozen"
    report = json.loads(p.stdout)
    assert p.returncode == 0 and report["status"] == "frozen", p.stderr
    assert all(frozen_state(m) for m in mounts)
    # while held, a run is refused
    rc, res, _ = run_json(loopfs.base, None, mounts)
    assert rc == 1 and codes(res) == ["AnotherRunInProgress"]
    assert "vmsnap thaw" in res["errors"][0]["message"]
    p = cli("thaw", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["status"] == "thawed"
    assert not any(frozen_state(m) for m in mounts)
    p = cli("thaw", "--json")
    assert json.loads(p.stdout)["status"] == "nothing"


def test_freeze_then_nothing_thaws_at_timeout(loopfs):
    # the guardian holds the freeze after the CLI exits, and thaws at the
    # deadline; bounds generous for a loaded machine
    (m,) = loopfs.make(1)
    t0 = time.monotonic()
    p = cli("freeze", "--timeout", "5", "--mount", m)
    returned = time.monotonic() - t0
    assert p.returncode == 0 and returned < 4, (returned, p.stderr)
    assert frozen_state(m), "not held after the CLI exited"
    while frozen_state(m) and time.monotonic() - t0 < 20:
        time.sleep(0.05)
    thawed_after = time.monotonic() - t0
    assert 4.5 < thawed_after < 20, "thawed %.1f s after the start, deadline 5 s" % thawed_after


def test_held_freeze_is_a_library_call_an_agent_can_make(tmp_path, loopfs):
    # the cycle behind `vmsnap freeze`, in-process: left frozen under the guardian
    from vmsnap_native.held import freeze_and_hold
    (m,) = loopfs.make(1)
    held = freeze_and_hold(str(tmp_path / "absent"), [m], 30)
    assert held.status == "frozen" and held.errors == [], held
    assert frozen_state(m) and [d["mountpoint"] for d in held.mounts] == [m]
    os.kill(held.guardian_pid, 0)   # alive, holding it
    assert [r.outcome for r in vmsnap.thaw_recorded()] == ["thawed by its guardian"]
    assert not frozen_state(m)
    refused = freeze_and_hold(str(tmp_path / "absent"), [str(tmp_path)], 30)
    assert refused.status == "failed" and "not a mount point" in refused.errors[0]


def test_freeze_refuses_a_non_mount(tmp_path):
    p = cli("freeze", "--timeout", "5", "--mount", str(tmp_path), "--json")
    assert p.returncode == 1 and "not a mount point" in json.loads(p.stdout)["errors"][0]


def test_run_killed_during_snapshot_is_thawed_and_next_run_works(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "run", "--config", cfg,
                             "--mount", m, "--log-file", str(tmp_path / "log"), "--",
                             "sh", "-c", "touch %s/in-snapshot; sleep 60" % tmp_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        if (tmp_path / "in-snapshot").exists():
            break
        time.sleep(0.05)
    assert frozen_state(m)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert thawed_soon([m])
    # the reaper resumes the application (post-script) under the run lock first
    assert resumes_done(), "the killed run's resume command did not finish"
    rc, res, _ = run_json(tmp_path, cfg, [m])
    assert rc == 0 and res["consistency"] == "application"


def test_second_run_is_refused_first_unharmed(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="touch %s/first-pre; sleep 2" % tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "vmsnap_native", "run", "--json", "--config",
                              cfg, "--mount", m, "--log-file", ""], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    for _ in range(100):
        if (tmp_path / "first-pre").exists():
            break
        time.sleep(0.05)
    rc, res, _ = run_json(tmp_path, None, [m])
    assert rc == 1 and codes(res) == ["AnotherRunInProgress"]
    assert "pid %d" % first.pid in res["errors"][0]["message"]
    out, _ = first.communicate(timeout=60)
    assert json.loads(out)["status"] == "success"


def test_stale_lock_and_record_are_recovered(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    # a run killed in the window along with its guardian leaves a record and a frozen fs
    code = ("import sys, time, os, signal, vmsnap_native as v\n"
            "from vmsnap_native.lock import RunLock\n"
            "RunLock().acquire()\n"
            "s = v.freeze_filesystems([sys.argv[1]], timeout=60); s.freeze()\n"
            "os.kill(s.guardian_pid, signal.SIGKILL); time.sleep(0.2)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    # SIGKILL the guardian then ourselves before noticing: both gone
    subprocess.run([sys.executable, "-c", code, m])
    assert frozen_state(m), "the test set-up should leave the fs frozen"
    rc, res, _ = run_json(tmp_path, None, [m])
    assert rc == 0, res
    assert any("recovered" in w and m in w for w in res["warnings"])
    assert not frozen_state(m)


def test_recovery_leaves_another_filesystem_mounted_in_its_place_alone(tmp_path, loopfs):
    # the record names a mount point and its device; a different filesystem
    # mounted there since is not thawed (nor anything else done to it)
    recorded, other = loopfs.make(2)
    code = ("import sys, os, signal, vmsnap_native as v\n"
            "s = v.freeze_filesystems([sys.argv[1]], timeout=60); s.freeze()\n"
            "os.kill(s.guardian_pid, signal.SIGKILL); os.kill(os.getpid(), signal.SIGKILL)\n")
    subprocess.run([sys.executable, "-c", code, recorded])
    assert frozen_state(recorded)
    subprocess.run(["fsfreeze", "-f", other], check=True)   # frozen by "someone else"
    # the other filesystem's device mounted over the recorded mount point
    dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", other], capture_output=True,
                         text=True, check=True).stdout.strip()
    subprocess.run(["mount", dev, recorded], check=True)
    try:
        p = cli("thaw", "--json")
        out = json.loads(p.stdout)
        assert [f["mountpoint"] for f in out["filesystems"]] == [recorded]
        assert out["filesystems"][0]["outcome"] == (
            "failed: the mount point is gone or another filesystem is there now: left alone, "
            "record kept")
        assert frozen_state(other), "vmsnap thawed a filesystem that was not the recorded one"
    finally:
        subprocess.run(["umount", recorded])
        subprocess.run(["fsfreeze", "-u", other])
    assert frozen_state(recorded)   # hidden under the other one: reported, not guessed
    # the record was kept: once the impostor is gone, `vmsnap thaw` finishes the job
    try:
        out = json.loads(cli("thaw", "--json").stdout)
        assert [f["outcome"] for f in out["filesystems"]] == ["thawed"]
        assert not frozen_state(recorded)
    finally:
        subprocess.run(["fsfreeze", "-u", recorded], stderr=subprocess.DEVNULL)


def test_python_m_works_like_vmsnap():
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "--version"], capture_output=True,
                       text=True)
    assert p.returncode == 0 and p.stdout.startswith("vmsnap ")
    p = subprocess.run([sys.executable, "-m", "vmsnap_native", "run", "--bogus"],
                       capture_output=True, text=True)
    assert p.returncode == 2


# -- the Python API ----------------------------------------------------------------

def test_api_run_with_callable_snapshot_while_frozen(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    seen = {}

    def snapshot():
        seen["frozen"] = frozen_state(m)
        return "snap-id-42"

    res = vmsnap.run(config=cfg, snapshot=snapshot, mounts=[m], freeze_timeout=10)
    assert isinstance(res, vmsnap.Result)
    assert res.status == "success" and res.consistency == "application"
    assert seen["frozen"] is True and res.snapshot.output == "snap-id-42"
    d = json.loads(res.to_json())
    assert d["snapshot"]["argv"][0].startswith("python:")


def test_api_callable_that_hangs_is_cut_at_the_deadline(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    res = vmsnap.run(config=str(tmp_path / "absent"), snapshot=lambda: time.sleep(5),
                     mounts=[m], freeze_timeout=0.5)
    assert res.status == "failed" and "FsFreezeTimeout" in [e.code for e in res.errors]
    assert not frozen_state(m)


def test_api_callable_that_raises_is_snapshot_failed(tmp_path, loopfs):
    (m,) = loopfs.make(1)

    def boom():
        raise RuntimeError("disk API said no")

    res = vmsnap.run(config=str(tmp_path / "absent"), snapshot=boom, mounts=[m])
    assert res.status == "failed" and res.errors[0].code == "SnapshotFailed"
    assert "disk API said no" in res.errors[0].message


def test_api_records_reach_the_agents_logging_after_the_thaw(tmp_path, loopfs):
    # an embedding agent routes the "vmsnap" logger; nothing reaches it while frozen
    import logging

    from vmsnap_native import cycle
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path, pre="echo pre-output-marker")
    got = []

    class AgentHandler(logging.Handler):
        def emit(self, record):
            got.append((record.getMessage(), record.levelname, record.created, cycle.in_window))

    handler = AgentHandler()
    logger = logging.getLogger("vmsnap")
    logger.addHandler(handler)
    old_level, snapped = logger.level, {}
    logger.setLevel(logging.INFO)
    try:
        res = vmsnap.run(config=cfg, snapshot=lambda: snapped.setdefault("at", time.time()),
                         mounts=[m], log_file=str(tmp_path / "log"))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert res.status == "success", res.errors
    messages = [g[0] for g in got]
    assert any("pre-output-marker" in t for t in messages), messages
    assert any(t.startswith("result: status success") for t in messages), messages
    # records made in the window (the freeze phase) arrive, stamped when made
    window = [g for g in got if g[0].startswith("phase freeze")]
    assert window and window[0][2] <= snapped["at"], got
    assert [g for g in got if g[3]] == [], "emitted while frozen"


WINDOW_WATCH = textwrap.dedent("""
    import json, os, sys
    import vmsnap_native as vmsnap
    from vmsnap_native import cycle
    imported, seen = [], {}

    def hook(event, args):   # lives and dies with this process
        if event == "import" and cycle.in_window:
            imported.append(args[0])

    sys.addaudithook(hook)

    def snapshot():
        seen["in_window"] = cycle.in_window
        seen["printed"] = os.fstat(1).st_size + os.fstat(2).st_size

    cfg, mount, log, report = sys.argv[1:]
    res = vmsnap.run(config=cfg, snapshot=snapshot, mounts=[mount], log_file=log)
    with open(report, "w") as f:
        json.dump({"status": res.status, "imported": imported, **seen}, f)
""")


def test_no_module_imported_and_nothing_printed_in_the_window(tmp_path, loopfs):
    # in a child of its own: an audit hook cannot be removed once installed
    (m,) = loopfs.make(1)
    cfg = setup_scripts(tmp_path)
    out, err, report = (tmp_path / n for n in ("stdout", "stderr", "report.json"))
    with open(out, "w") as fo, open(err, "w") as fe:
        subprocess.run([sys.executable, "-c", WINDOW_WATCH, cfg, m, str(tmp_path / "l"),
                        str(report)], stdout=fo, stderr=fe, timeout=60, check=True)
    seen = json.loads(report.read_text())
    assert seen["status"] == "success" and seen["in_window"] is True
    assert seen["imported"] == []
    assert seen["printed"] == 0, "printed before or in the window: %r %r" % (
        out.read_text(), err.read_text())


def test_freeze_refuses_to_print_into_a_filesystem_it_would_freeze(loopfs):
    (m,) = loopfs.make(1)
    out = os.path.join(m, "out.json")
    p = subprocess.run("%s -m vmsnap_native freeze --timeout 30 --json --mount %s > %s"
                       % (sys.executable, m, out), shell=True, capture_output=True, text=True,
                       timeout=30)
    assert p.returncode == 1 and "redirect it elsewhere" in p.stderr
    assert not frozen_state(m)
    assert json.load(open(out))["status"] == "failed"


# -- the snapshot step's program: the trusted PATH, not the caller's ---------------

NOBODY = 65534


def _users_bin(tmp_path, marker, *names):
    """A directory of an unprivileged user's, holding programs NAMES that
    record who ran them in MARKER."""
    d = tmp_path / "userbin"
    d.mkdir()
    for name in names:
        path = d / name
        path.write_text("#!/bin/sh\nid -u >> %s\n" % marker)
        os.chmod(path, 0o755)
        os.chown(path, NOBODY, NOBODY)
    os.chown(d, NOBODY, NOBODY)
    return d


def test_a_users_program_first_on_the_callers_path_never_runs_as_root(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    marker = tmp_path / "ran-as"
    users = _users_bin(tmp_path, marker, "mysnap", "true")
    env = {"PATH": "%s:%s" % (users, os.environ.get("PATH", "/usr/bin:/bin"))}
    cfg = tmp_path / "absent.json"
    # only the user's directory has it: not run, and the result says where it was
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["mysnap"], env=env)
    assert not marker.exists(), "the user's mysnap ran as root"
    assert rc == 1 and "SnapshotFailed" in codes(res), p.stderr
    assert res["snapshot"]["program"] is None
    assert any(str(users / "mysnap") in w for w in res["warnings"]), res["warnings"]
    # the trusted PATH has it too: that one runs, and the result names the other
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["true"], env=env)
    assert not marker.exists(), "the user's true ran as root"
    assert rc == 0, p.stderr
    assert os.path.dirname(res["snapshot"]["program"]) in trusted_path().split(":")
    assert any(str(users / "true") in w and "would have run" in w for w in res["warnings"])
    # by its full path: refused by the policy, the owner named
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=[str(users / "mysnap")])
    assert not marker.exists()
    assert rc == 1 and "SnapshotFailed" in codes(res)
    assert "uid %d" % NOBODY in res["errors"][-1]["message"], res["errors"]


def test_a_root_controlled_full_path_runs_with_the_trusted_path_and_the_frozen_mounts(
        tmp_path, loopfs):
    (m,) = loopfs.make(1)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    from .helpers import write_script
    snap = write_script(etc / "snap.sh", 'echo "phase=$VMSNAP_PHASE path=$PATH"\n'
                        'echo "frozen=$VMSNAP_FROZEN_MOUNTS"\necho snapshot-id-42', mode=0o755)
    rc, res, p = run_json(tmp_path, tmp_path / "absent.json", [m], snapshot=[snap],
                          env={"PATH": "/nonexistent:%s" % os.environ.get("PATH", "/bin")})
    assert rc == 0, p.stderr
    assert res["snapshot"]["program"] == snap
    out = res["snapshot"]["output"]
    assert "phase=snapshot" in out and "frozen=%s" % m in out
    assert "path=%s\n" % trusted_path() in out
    assert not [w for w in res["warnings"] if "snapshot step" in w]


def trusted_path():
    from vmsnap_native import process
    return process.clean_environment()["PATH"]


# -- the command line's habits ---------------------------------------------------

INTERNAL = ("SPEC §", "SPEC section", "this machine", "issue 1", "issue 2", "issue 3",
            "issue 4", "issue 5", "issue 6", "issue 7", "issue 8", "issue 9")


def _subparsers():
    from vmsnap_native import cli as cli_mod
    parser = cli_mod.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return parser, sub.choices


def test_every_option_has_help_and_run_shows_the_snapshot_command():
    parser, subs = _subparsers()
    missing = ["%s %s" % (name, "/".join(a.option_strings) or a.dest)
               for name, sp in [("vmsnap", parser)] + sorted(subs.items())
               for a in sp._actions if not a.help]
    assert not missing, missing
    usage = subs["run"].format_usage()
    assert "[-- SNAPSHOT_CMD ...]" in usage
    for name, sp in [("vmsnap", parser)] + sorted(subs.items()):
        text = sp.format_help()
        assert not [w for w in INTERNAL if w in text], (name, text)
    p = cli("-V")
    assert p.returncode == 0 and p.stdout.strip() == "vmsnap %s" % vmsnap.__version__
    p = cli("run", "mysnap")
    assert p.returncode == 2 and "after --" in p.stderr


def test_user_text_names_nothing_a_user_lacks():
    """The command line and fleet sections of the README and the Ansible
    collection's documentation cite no internal document or issue."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    readme = open(os.path.join(root, "README.md")).read()
    sections = [readme.split("\n## " + title, 1)[1].split("\n## ", 1)[0]
                for title in ("The command line", "Fleets")]
    texts = {"README " + t: s for t, s in zip(("command line", "fleets"), sections)}
    for dirpath, _, files in os.walk(os.path.join(root, "contrib", "ansible")):
        for f in files:
            if f.endswith((".py", ".yml", ".yaml", ".md")):
                texts[os.path.join(dirpath, f)] = open(os.path.join(dirpath, f)).read()
    found = [(where, w) for where, text in texts.items() for w in INTERNAL if w in text]
    assert not found, found


def test_dry_run_names_the_snapshot_program(tmp_path):
    p = cli("run", "--dry-run", "--json", "--log-file", "", "--config", str(tmp_path / "none.json"),
            "--mount", "/", "--", "sync", "-f", "/")
    plan = json.loads(p.stdout)["plan"]
    assert plan["snapshot_step"]["argv"] == ["sync", "-f", "/"]
    program = plan["snapshot_step"]["program"]
    assert os.path.basename(program) == "sync" and os.path.isabs(program)
    assert "snapshot step: runs sync -f / (program %s)" % program in p.stderr
    p = cli("run", "--dry-run", "--log-file", "", "--config", str(tmp_path / "none.json"),
            "--mount", "/", "--", "no-such-snapshot-tool")
    assert "snapshot step: no-such-snapshot-tool would NOT run: no-such-snapshot-tool: " \
           "not found in" in p.stderr


def test_dry_run_says_it_ignores_freeze_at(tmp_path):
    gate = str(tmp_path / "gate")
    p = cli("run", "--dry-run", "--json", "--log-file", "", "--config", str(tmp_path / "none.json"),
            "--mount", "/", "--freeze-at", gate)
    res = json.loads(p.stdout)
    assert any("--freeze-at is ignored by a dry run" in w and gate in w
               for w in res["warnings"]), res["warnings"]
    p = cli("run", "--dry-run", "--log-file", "", "--config", str(tmp_path / "none.json"),
            "--mount", "/", "--freeze-at", gate)
    assert "--freeze-at is ignored by a dry run" in p.stderr + p.stdout
    assert not os.path.exists(gate + ".armed")


def test_snapshot_output_ends_on_the_terminal_in_the_log_and_in_json(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    from .helpers import write_script
    snap = write_script(etc / "snap.sh", 'for i in $(seq 1 40); do echo "progress $i"; done\n'
                        'echo "created snapshot snap-0123abcd"', mode=0o755)
    rc, res, p = run_json(tmp_path, tmp_path / "none.json", [m], snapshot=[snap])
    assert rc == 0, p.stderr
    assert "| created snapshot snap-0123abcd" in p.stderr and "| progress 40" in p.stderr
    assert "| progress 30" not in p.stderr          # the last lines only
    assert "progress 1\n" in res["snapshot"]["output"]
    assert res["snapshot"]["output"].endswith("created snapshot snap-0123abcd\n")
    log = (tmp_path / "vmsnap.log").read_text()
    assert "created snapshot snap-0123abcd" in log and "progress 30\n" not in log


def test_quiet_prints_only_errors_and_verbose_the_log(tmp_path, loopfs):
    (m,) = loopfs.make(1)
    cfg = tmp_path / "none.json"
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["true"], extra=["-q"])
    assert rc == 0 and p.stderr == "" and res["status"] == "success"
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["false"], extra=["-q"])
    assert rc == 1 and "error SnapshotFailed" in p.stderr and "->" in p.stderr
    assert "freeze window" not in p.stderr and "warning" not in p.stderr, p.stderr
    rc, res, p = run_json(tmp_path, cfg, [m], snapshot=["true"], extra=["-v"])
    assert rc == 0 and "vmsnap log: INFO phase freeze" in p.stderr, p.stderr
    assert "freeze window" in p.stderr


def test_a_stop_signal_while_the_report_is_printed_does_not_cut_it(tmp_path):
    """The run is over when its report is printed: a SIGTERM then (a service
    manager stopping a unit that is about to end) must leave the JSON whole
    and the run's own exit status."""
    code = textwrap.dedent("""
        import os, signal, sys
        from vmsnap_native import cli
        real = cli.emit_json
        def emit_after_a_sigterm(obj):
            os.kill(os.getpid(), signal.SIGTERM)
            real(obj)
        cli.emit_json = emit_after_a_sigterm
        sys.exit(cli.main(sys.argv[1:]))
    """)
    p = subprocess.run([sys.executable, "-c", code, "run", "--dry-run", "--json", "--log-file", "",
                        "--config", str(tmp_path / "none.json"), "--mount", "/", "--", "true"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, (p.returncode, p.stderr)
    assert json.loads(p.stdout)["status"] == "success"
