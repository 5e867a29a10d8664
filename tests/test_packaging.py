"""Packaging: the systemd units (verify, hardening thresholds, every
relaxation explained), the manual pages (lint-clean, every option and field
documented), the shell completion generated from the parser (loaded in bash
and zsh), the example configuration.  The installs themselves (sdist, wheel,
the Debian package in a clean chroot) are `make test-packaging`.  And the
types: mypy --strict over the package (`make typecheck`)."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from vmsnap_native import __version__, config
from vmsnap_native.cli import build_parser

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNITS = os.path.join(REPO, "contrib", "systemd")
MAN = os.path.join(REPO, "man")
VMSNAP = os.path.join(os.path.dirname(sys.executable), "vmsnap")
UNIT_NAMES = ("vmsnap-thaw.service", "vmsnap.service", "vmsnap.timer")
# the exposure each unit must stay at or below (systemd-analyze security, 0-10)
EXPOSURE_LIMIT = {"vmsnap-thaw.service": 3.0, "vmsnap.service": 7.0}

ci_required = pytest.mark.ci_required


def need(tool):
    if shutil.which(tool) is None:
        pytest.skip("%s is not installed (CI installs it: .ci/run)" % tool)


def unit_text(name):
    with open(os.path.join(UNITS, name), encoding="utf-8") as f:
        return f.read()


def directives(text):
    """(section, key, value) of each setting, comments left out."""
    section, out = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def comments(text):
    return "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))


# -- systemd units ---------------------------------------------------------------

def make_root(tmp_path, vmsnap_path):
    """A root tree with this system's units, an executable VMSNAP_PATH and
    /bin/sh, for systemd-analyze verify --root."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for path in (vmsnap_path, "/bin/sh"):
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#!/bin/sh\n")
        target.chmod(0o755)
    return root


@ci_required
@pytest.mark.parametrize("where", ["/usr/bin/vmsnap", "/usr/local/bin/vmsnap",
                                   "/opt/vmsnap/venv/bin/vmsnap"])
def test_units_verify_where_vmsnap_is_installed(tmp_path, where):
    """/usr/bin: the Debian package; /usr/local/bin: pip as root; a venv:
    tools/install-units.sh points ExecStart= at it and verifies."""
    need("systemd-analyze")
    root = make_root(tmp_path, where)
    p = subprocess.run(["sh", os.path.join(REPO, "tools", "install-units.sh"), "--root",
                        str(root), where], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "is not executable" not in p.stderr
    for name in UNIT_NAMES:
        text = (root / "etc/systemd/system" / name).read_text()
        assert text == unit_text(name).replace("/usr/bin/vmsnap", where)


@ci_required
def test_units_fail_verify_when_vmsnap_is_not_where_they_say(tmp_path):
    need("systemd-analyze")
    root = make_root(tmp_path, "/usr/local/bin/vmsnap")   # pip's place, not the units'
    (root / "etc/systemd/system").mkdir(parents=True)
    for name in UNIT_NAMES:
        shutil.copy(os.path.join(UNITS, name), root / "etc/systemd/system" / name)
    p = subprocess.run(["systemd-analyze", "verify", "--man=no", "--root=%s" % root,
                        *UNIT_NAMES], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "/usr/bin/vmsnap is not executable" in p.stderr


def exposure(name):
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager",
                        os.path.join(UNITS, name)], capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", p.stdout)
    assert m, p.stdout[-2000:] + p.stderr
    failed = [line.split()[1] for line in p.stdout.splitlines() if line.startswith("✗")]
    return float(m.group(1)), failed


@ci_required
@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMIT))
def test_units_are_hardened_to_their_threshold(name):
    need("systemd-analyze")
    level, _ = exposure(name)
    assert level <= EXPOSURE_LIMIT[name], "%s: exposure %.1f" % (name, level)
    # the same limit as systemd-analyze's own gate (CI and the .deb test use it)
    p = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=%d"
                        % (EXPOSURE_LIMIT[name] * 10), os.path.join(UNITS, name)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


@ci_required
@pytest.mark.parametrize("name", sorted(EXPOSURE_LIMIT))
def test_every_relaxed_hardening_setting_says_why(name):
    """Each setting systemd-analyze counts against the unit is either set
    (and only partly restrictive, e.g. the address families it needs) or
    named in a comment with its reason; a capability is kept by name."""
    need("systemd-analyze")
    text = unit_text(name)
    notes = comments(text)
    set_keys = {key for _, key, _ in directives(text)}
    _, failed = exposure(name)
    unexplained = []
    for item in failed:
        key, _, what = item.partition("=")
        if key in set_keys and key != "CapabilityBoundingSet":
            continue
        if key == "CapabilityBoundingSet":
            # ~CAP_(CHOWN|FSETID|SETFCAP), ~CAP_AUDIT_*: one of them kept by name
            m = re.match(r"~CAP_(\w*)\(([^)]*)\)", what)
            caps = (["CAP_" + m.group(1) + c.rstrip("*") for c in m.group(2).split("|")] if m
                    else [what.lstrip("~").rstrip("*")])
            if any(c in notes for c in caps):
                continue
        elif key + "=" in notes:
            continue
        unexplained.append(item)
    assert not unexplained, "%s: relaxed without a reason in a comment: %s" % (name, unexplained)


def test_the_run_is_started_by_its_timer_only():
    svc = directives(unit_text("vmsnap.service"))
    assert not [d for d in svc if d[0] == "Install"], "vmsnap.service must have no [Install]"
    timer = directives(unit_text("vmsnap.timer"))
    assert ("Install", "WantedBy", "timers.target") in timer
    assert ("Timer", "Persistent", "true") in timer


def test_the_unconfigured_run_fails_and_says_what_to_do():
    (cmd,) = [v for s, k, v in directives(unit_text("vmsnap.service")) if k == "ExecStart"]
    p = subprocess.run(["sh", "-c", cmd.split("sh -c ", 1)[1].strip("'")],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "systemctl edit vmsnap.service" in p.stderr
    assert p.stderr.startswith("<3>")     # an error in the journal


def test_the_documented_override_clears_execstart_first_and_is_a_valid_command():
    lines = [line.lstrip("# ").rstrip() for line in comments(unit_text("vmsnap.service"))
             .splitlines()]
    i = lines.index("[Service]")
    assert lines[i + 1] == "ExecStart="
    cmd = lines[i + 2]
    assert cmd.startswith("ExecStart=/usr/bin/vmsnap run ")
    argv = cmd.split("=", 1)[1].split()[1:]
    cut = argv.index("--")
    args = build_parser().parse_args(argv[:cut])
    assert args.command == "run" and argv[cut + 1:]
    assert args.metrics_file == "/var/lib/prometheus/node-exporter/vmsnap.prom"
    # the manual page shows the same override
    with open(os.path.join(MAN, "vmsnap.8"), encoding="utf-8") as f:
        page = f.read().replace("\\-", "-").replace("\\e\n  ", "")
    assert "ExecStart=\n" + " ".join(cmd.split()) in page


def test_documentation_points_at_manual_pages():
    for name in UNIT_NAMES:
        docs = [v for s, k, v in directives(unit_text(name)) if k == "Documentation"]
        assert docs and all(u.startswith("man:") for d in docs for u in d.split()), (name, docs)
        for page in re.findall(r"man:(vmsnap[\w-]*)\((\d)\)", " ".join(docs)):
            assert os.path.exists(os.path.join(MAN, "%s.%s" % page)), page


def test_the_thaw_unit_runs_vmsnap_thaw_at_boot():
    d = directives(unit_text("vmsnap-thaw.service"))
    assert ("Service", "ExecStart", "/usr/bin/vmsnap thaw") in d
    assert ("Install", "WantedBy", "sysinit.target") in d
    assert ("Service", "ReadWritePaths", "-/run/vmsnap") in d


# The thaw unit's sandbox, rebuilt by hand (no systemd is PID 1 here): a
# private mount namespace with every mount read-only but the runtime
# directory (ProtectSystem=strict, ReadWritePaths=), the frozen filesystem
# read-only in that view too, /proc with subset=pid and hidepid=invisible
# (ProcSubset=, ProtectProc=), no network (PrivateNetwork=), CAP_SYS_ADMIN
# as the only capability and no new privileges, and memory that is never
# writable and executable (MemoryDenyWriteExecute=, PR_SET_MDWE). The
# system call filter is not rebuilt.
SANDBOX = r"""
set -eu
rt=$VMSNAP_RUNTIME_DIR
mount --bind "$rt" "$rt"
for mp in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do
    case $mp in /proc*|/sys*|/dev*|"$rt") continue ;; esac
    mount -o remount,bind,ro "$mp" 2>/dev/null || true
done
mount -t proc -o subset=pid,hidepid=invisible proc /proc
exec setpriv --no-new-privs --bounding-set -all,+sys_admin --inh-caps -all \
    "$PYTHON" -c "$MDWE" "$VMSNAP" thaw --json
"""
MDWE = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:   # PR_SET_MDWE
    sys.exit('PR_SET_MDWE: %s' % os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


CRASH = """
import os, signal, sys, vmsnap_native as v
s = v.freeze_filesystems([sys.argv[1]], timeout=120); s.freeze()
os.kill(s.guardian_pid, signal.SIGKILL); os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("left", ["held by its guardian", "after a crash"])
def test_vmsnap_thaw_thaws_inside_the_thaw_unit_s_sandbox(loopfs, left):
    """What vmsnap-thaw.service exists for: a freeze left standing (held by a
    vmsnap freeze's guardian, or recorded by a run whose guardian and
    controller were killed) is thawed by vmsnap thaw under the unit's
    restrictions, and its record removed."""
    from .conftest import frozen_state
    for tool in ("unshare", "setpriv"):
        need(tool)
    (m,) = loopfs.make(1)
    if left == "held by its guardian":
        p = subprocess.run([VMSNAP, "freeze", "--timeout", "60", "--mount", m],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
    else:
        subprocess.run([sys.executable, "-c", CRASH, m], timeout=60)
    assert frozen_state(m)
    rt = os.environ["VMSNAP_RUNTIME_DIR"]
    assert [f for f in os.listdir(rt) if f.startswith("freeze-")]
    env = dict(os.environ, PYTHON=sys.executable, MDWE=MDWE, VMSNAP=VMSNAP)
    p = subprocess.run(["unshare", "-m", "-n", "--propagation", "private", "sh", "-c", SANDBOX],
                       capture_output=True, text=True, timeout=60, env=env)
    out = json.loads(p.stdout) if p.stdout.strip() else None
    assert p.returncode == 0 and out and out["status"] == "thawed", p.stdout + p.stderr
    assert [f["mountpoint"] for f in out["filesystems"]] == [m]
    assert not frozen_state(m)
    assert not [f for f in os.listdir(rt) if f.startswith("freeze-")]


# -- manual pages ----------------------------------------------------------------

PAGES = ("vmsnap.8", "vmsnap-config.5")


@ci_required
@pytest.mark.parametrize("page", PAGES)
def test_man_pages_are_lint_clean(page):
    need("mandoc")
    need("groff")
    path = os.path.join(MAN, page)
    p = subprocess.run(["mandoc", "-T", "lint", "-W", "all", path], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and not p.stdout.strip(), p.stdout + p.stderr
    p = subprocess.run(["groff", "-ww", "-man", "-z", path], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0 and not p.stderr.strip(), p.stderr


def page_text(name):
    with open(os.path.join(MAN, name), encoding="utf-8") as f:
        return f.read().replace("\\-", "-")


@pytest.mark.parametrize("page", PAGES)
def test_man_pages_carry_the_version(page):
    th = [line for line in page_text(page).splitlines() if line.startswith(".TH ")][0]
    assert '"vmsnap %s"' % __version__ in th


def parser_options(parser, path=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), None
                yield from parser_options(sub, path + (name,))
        for opt in action.option_strings:
            yield path, opt


def test_vmsnap_8_documents_every_command_and_option():
    text = page_text("vmsnap.8")
    commands = text.split(".SH COMMANDS", 1)[1].split(".SH OPTIONS", 1)[0]
    options = text.split(".SH OPTIONS", 1)[1].split(".SH EXIT STATUS", 1)[0]
    synopsis = text.split(".SH SYNOPSIS", 1)[1].split(".SH DESCRIPTION", 1)[0]
    missing = []
    for path, opt in parser_options(build_parser()):
        if opt is None:
            if ".B %s\n" % path[-1] not in commands or ".B %s\n" % path[-1] not in synopsis:
                missing.append(" ".join(path))
        elif opt not in options:
            missing.append("%s %s" % (" ".join(path), opt))
    assert not missing, "not in vmsnap(8): %s" % missing


def test_vmsnap_8_exit_statuses_are_the_cli_s():
    from vmsnap_native import cli
    section = page_text("vmsnap.8").split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    listed = set(re.findall(r"^\.B (\d+)$", section, re.M))
    assert {"0", "1", "3", str(cli.EXIT_USAGE), "130"} <= listed


def test_vmsnap_config_5_documents_every_field():
    text = page_text("vmsnap-config.5")
    fields = list(config.FIELDS) + list(config.AZURE_ONLY_FIELDS)
    missing = [f for f in fields if not re.search(r"^\.BR? .*\b%s\b" % f, text, re.M)
               and f != "appName"]
    assert not missing, "not in vmsnap-config(5): %s" % missing


def test_the_example_configuration_is_valid_and_the_same_everywhere():
    path = os.path.join(REPO, "debian", "examples", "VMSnapshotScriptPluginConfig.json")
    with open(path, "rb") as f:
        data = f.read()
    cfg = config.parse_config(data, path)
    assert cfg.warnings == [], cfg.warnings
    page = page_text("vmsnap-config.5")
    example = page.split(".SH EXAMPLES\n.EX\n", 1)[1].split("\n.EE", 1)[0]
    assert json.loads(example) == json.loads(data)


# -- completion ------------------------------------------------------------------

@pytest.fixture(scope="module")
def completion(tmp_path_factory):
    pytest.importorskip("shtab")
    out = tmp_path_factory.mktemp("completion")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "completion.py"), str(out)],
                   check=True, timeout=120)
    return out


BASH_COMPLETE = """
. "$1"
shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
_shtab_vmsnap
printf '%s\\n' "${COMPREPLY[@]}"
"""


def bash_complete(completion, *words):
    p = subprocess.run(["bash", "-c", BASH_COMPLETE, "bash", str(completion / "vmsnap"),
                        *words], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


@ci_required
def test_bash_completes_commands_options_and_agents(completion):
    need("bash")
    assert {"run", "check", "mounts", "freeze", "thaw", "hook", "demo", "bench"} <= \
        set(bash_complete(completion, "vmsnap", ""))
    assert bash_complete(completion, "vmsnap", "ru") == ["run"]
    assert "--dry-run" in bash_complete(completion, "vmsnap", "run", "--")
    assert "--force" in bash_complete(completion, "vmsnap", "thaw", "--")
    # after --: the snapshot command, a command name
    assert bash_complete(completion, "vmsnap", "run", "--json", "--", "printen") == ["printenv"]
    from vmsnap_native import agents
    assert sorted(bash_complete(completion, "vmsnap", "hook", "")) == sorted(agents.AGENTS)


ZSH_COMPLETE = r"""
zmodload zsh/zpty
zpty z 'zsh -f -i'
zpty -w z "PS1='ZP> '; fpath=($1 \$fpath); autoload -Uz compinit; compinit -u -D; echo READY"
zpty -r z junk '*READY*ZP> '
zpty -w -n z "$2"$'\t'
zpty -w -n z $'\C-e #DONE\n'
zpty -r z out '*#DONE*ZP> '
zpty -d z
print -r -- "$out"
"""


def zsh_complete(completion, line):
    p = subprocess.run(["zsh", "-f", "-c", ZSH_COMPLETE, "zsh", str(completion), line],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]|\r", "", p.stdout)
    shown = []     # the line as the terminal shows it: a backspace takes a character back
    for ch in plain:
        if ch == "\b":
            shown = shown[:-1]
        else:
            shown.append(ch)
    return "".join(shown)


@ci_required
def test_zsh_completes_commands_and_options(completion):
    need("zsh")
    assert "vmsnap run #DONE" in zsh_complete(completion, "vmsnap ru")
    # run takes a positional (the snapshot command): an option is still inserted, not listed
    assert "vmsnap run --dry-run #DONE" in zsh_complete(completion, "vmsnap run --dry")
    assert "vmsnap thaw --force #DONE" in zsh_complete(completion, "vmsnap thaw --fo")
    # after --: a command name, and no more of vmsnap's options
    assert "vmsnap run --json -- printenv #DONE" in \
        zsh_complete(completion, "vmsnap run --json -- printen")
    assert "--dry-run" not in zsh_complete(completion, "vmsnap run -- --dry")


# -- types -------------------------------------------------------------------------

@ci_required
@pytest.mark.slow
def test_the_package_passes_mypy_strict():
    """What `make typecheck` runs: the whole package, and the tests' helpers,
    under mypy --strict, without an error (a py.typed package's promise)."""
    pytest.importorskip("mypy", reason="mypy comes with the test extras (pip install -e '.[test]')")
    for args in (["src/vmsnap_native"], ["--follow-imports=silent", "tests/helpers.py"]):
        p = subprocess.run([sys.executable, "-m", "mypy", "--strict", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, "mypy --strict %s:\n%s%s" % (" ".join(args), p.stdout, p.stderr)
