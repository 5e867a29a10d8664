"""Permission policy (SPEC §2), on real files with real owners."""

from __future__ import annotations

import os
import pwd
import shutil

import pytest

from vmsnap_native import hooks, policy
from vmsnap_native.process import clean_environment, run_process

from .conftest import IS_ROOT
from .helpers import write_script

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root to own files as root")
NOBODY = 65534


@pytest.fixture
def safe_dir(tmp_path):
    d = tmp_path / "scripts"
    d.mkdir()
    os.chmod(d, 0o755)
    return d


def test_700_script_runs_directly(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0"), "pre")
    assert chk.ok and chk.argv_prefix == (str(safe_dir / "a"),)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_600_and_400_run_through_sh(safe_dir, mode):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", mode=mode), "pre")
    assert chk.ok and chk.argv_prefix == ("/bin/sh", str(safe_dir / "a"))


@pytest.mark.parametrize("mode", [0o750, 0o705, 0o720, 0o702, 0o4700, 0o2700])
def test_group_other_or_setid_bits_refused(safe_dir, mode):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", mode=mode), "post")
    assert chk.problem.code == "InsufficientPermissionforPost-Script"
    assert oct(mode)[2:] in chk.problem.message


def test_non_root_owner_refused(safe_dir):
    p = write_script(safe_dir / "a", "exit 0")
    os.chown(p, NOBODY, NOBODY)
    chk = policy.check_script(p, "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "uid 65534" in chk.problem.message


def test_writable_parent_directory_refused(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    chk = policy.check_script(write_script(d / "a", "exit 0"), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "writable by group or others" in chk.problem.message and str(d) in chk.problem.message


def test_directory_owned_by_someone_else_refused(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    os.chmod(d, 0o755)
    p = write_script(d / "a", "exit 0")
    os.chown(d, NOBODY, NOBODY)
    chk = policy.check_script(p, "pre")
    assert chk.problem and "owned by uid 65534" in chk.problem.message


def test_sticky_world_writable_directory_accepted_on_the_path(tmp_path):
    d = tmp_path / "sticky"
    d.mkdir()
    os.chmod(d, 0o1777)
    (d / "app").mkdir(mode=0o755)
    assert policy.check_script(write_script(d / "app" / "a", "exit 0"), "pre").ok
    # not as the script's own directory: anyone could add a file it reads (review)
    chk = policy.check_script(write_script(d / "a", "exit 0"), "pre")
    assert chk.problem and "directory %s holding" % d in chk.problem.message


def test_symlink_to_non_root_file_refused(safe_dir, tmp_path):
    target = write_script(safe_dir / "real", "exit 0")
    os.chown(target, NOBODY, NOBODY)
    link = safe_dir / "link"
    os.symlink(target, link)
    chk = policy.check_script(str(link), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"


def test_symlink_into_unsafe_directory_refused(safe_dir, tmp_path):
    bad = tmp_path / "attacker"
    bad.mkdir()
    os.chown(bad, NOBODY, NOBODY)
    target = write_script(bad / "evil", "exit 0")   # root-owned file, attacker's directory
    os.symlink(target, safe_dir / "link")
    chk = policy.check_script(str(safe_dir / "link"), "pre")
    assert chk.problem and str(bad) in chk.problem.message


def test_symlink_to_safe_file_accepted_and_keeps_configured_path(safe_dir):
    target = write_script(safe_dir / "real", "exit 0")
    os.symlink("real", safe_dir / "link")
    chk = policy.check_script(str(safe_dir / "link"), "pre")
    assert chk.ok and chk.resolved == target and chk.argv_prefix == (str(safe_dir / "link"),)


def test_missing_script(safe_dir):
    chk = policy.check_script(str(safe_dir / "nope"), "post")
    assert chk.problem.code == "Post-ScriptNotFound"
    assert policy.check_script("", "pre").problem.code == "Pre-ScriptNotFound"


def test_config_file_permissions(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("{}")
    for mode, ok in ((0o600, True), (0o400, True), (0o640, False), (0o604, False), (0o700, False)):
        os.chmod(p, mode)
        assert (policy.check_config_stat(os.stat(p), str(p)) is None) is ok, oct(mode)
    os.chmod(p, 0o600)
    os.chown(p, NOBODY, 0)
    prob = policy.check_config_stat(os.stat(p), str(p))
    assert prob.code == "InsufficientPermissionforJSONConfigFile"


# -- symlinks: each one followed must be root-owned (SPEC §2) -------------------

@pytest.fixture
def sticky_dir(tmp_path):
    d = tmp_path / "sticky"
    d.mkdir()
    os.chmod(d, 0o1777)
    return d


def test_user_owned_symlink_in_sticky_dir_refused(safe_dir, sticky_dir):
    # the kernel's fs.protected_symlinks is not consulted: the walk reads links itself
    target = write_script(safe_dir / "real", "exit 0")
    link = sticky_dir / "pre.sh"
    os.symlink(target, link)
    os.lchown(link, NOBODY, NOBODY)
    chk = policy.check_script(str(link), "post")
    assert chk.problem.code == "InsufficientPermissionforPost-Script"
    assert "symlink %s" % link in chk.problem.message
    assert "uid %d (%s)" % (NOBODY, pwd.getpwuid(NOBODY).pw_name) in chk.problem.message


def test_root_owned_symlink_in_sticky_dir_accepted(safe_dir, sticky_dir):
    target = write_script(safe_dir / "real", "exit 0")
    os.symlink(target, sticky_dir / "pre.sh")
    chk = policy.check_script(str(sticky_dir / "pre.sh"), "pre")
    assert chk.ok and chk.resolved == target


def test_user_owned_symlink_to_a_directory_on_the_path_refused(safe_dir, tmp_path):
    write_script(safe_dir / "pre.sh", "exit 0")
    os.symlink(safe_dir, tmp_path / "dirlink")
    os.lchown(tmp_path / "dirlink", NOBODY, NOBODY)
    chk = policy.check_script(str(tmp_path / "dirlink" / "pre.sh"), "pre")
    assert chk.problem and "symlink %s" % (tmp_path / "dirlink") in chk.problem.message


def test_relative_link_with_dotdot_resolves(safe_dir, tmp_path):
    target = write_script(safe_dir / "real", "exit 0")
    other = tmp_path / "other"
    other.mkdir(mode=0o755)
    os.symlink("../scripts/real", other / "link")
    chk = policy.check_script(str(other / "link"), "pre")
    assert chk.ok and chk.resolved == target


def test_symlink_loop_refused(safe_dir):
    os.symlink("b", safe_dir / "a")
    os.symlink("a", safe_dir / "b")
    chk = policy.check_script(str(safe_dir / "a"), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "too many levels of symbolic links" in chk.problem.message


# -- relative paths: Azure's "not found" codes ----------------------------------

@pytest.mark.parametrize("path", ["pre.sh", "./pre.sh", "~/pre.sh", "scripts/pre.sh"])
def test_relative_or_tilde_path_is_not_found_and_asks_for_a_full_path(path):
    chk = policy.check_script(path, "post")
    assert chk.problem.code == "Post-ScriptNotFound"
    assert "full path" in chk.problem.message and path in chk.problem.message


# -- how the script runs, and what that runs ------------------------------------

def run_checked(chk, *args):
    env = clean_environment({"PATH": policy.trusted_search_path()})
    return run_process(list(chk.argv_prefix) + list(args), timeout=30, env=env)


def test_no_shebang_executable_runs_with_sh_and_keeps_its_configured_path(safe_dir, tmp_path):
    # Microsoft's Oracle example: mode 700, no #! line
    write_script(safe_dir / "real", 'echo "zero=$0 one=$1"', shebang=None)
    link = tmp_path / "configured"
    os.symlink(safe_dir / "real", link)
    chk = policy.check_script(str(link), "pre")
    assert chk.ok and chk.argv_prefix == ("/bin/sh", str(link))
    res = run_checked(chk, "x")
    assert (res.exit_code, res.output) == (0, "zero=%s one=x\n" % link)


def test_elf_executable_runs_directly(safe_dir):
    exe = safe_dir / "true"
    shutil.copy("/bin/true", exe)
    os.chmod(exe, 0o700)
    chk = policy.check_script(str(exe), "pre")
    assert chk.ok and chk.argv_prefix == (str(exe),)
    assert run_checked(chk).exit_code == 0


@pytest.mark.parametrize("shebang", ["#!/bin/sh\r", "#!/bin/sh -e\r", None])
def test_windows_line_endings_reported_with_the_fix(safe_dir, shebang):
    path = safe_dir / "a"
    first = (shebang + "\n") if shebang else ""
    path.write_bytes(first.encode() + b"echo hi\r\nexit 0\r\n")
    os.chmod(path, 0o700)
    chk = policy.check_script(str(path), "pre")
    assert chk.ok and chk.argv_prefix == ("/bin/sh", str(path))   # as Azure runs it
    assert "Windows line endings" in chk.hint and "dos2unix %s" % path in chk.hint
    assert [(p.code, p.message) for p in chk.check_problems] == \
        [("Pre-ScriptExecutionFailed", chk.hint)]
    if shebang:
        assert repr(shebang[2:]) in chk.hint


def test_clean_script_has_no_hint_and_no_check_problem(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0"), "pre")
    assert chk.ok and chk.hint is None and chk.check_problems == []


def write_interpreter(path, owner=0, mode=0o755):
    shutil.copy("/bin/sh", path)   # a real interpreter: a copy of sh
    os.chown(path, owner, owner)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize("owner,mode,why", [(NOBODY, 0o755, "uid %d" % NOBODY),
                                            (0, 0o775, "mode 775"), (0, 0o757, "mode 757")])
def test_interpreter_not_root_controlled_refused(safe_dir, owner, mode, why):
    interp = write_interpreter(safe_dir / "interp", owner, mode)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!" + interp), "post")
    assert chk.problem.code == "InsufficientPermissionforPost-Script"
    assert "the #! line of %s runs %s" % (safe_dir / "a", interp) in chk.problem.message
    assert why in chk.problem.message


def test_interpreter_in_a_user_directory_refused(safe_dir, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    interp = write_interpreter(theirs / "interp")   # root-owned file, user's directory
    os.chown(theirs, NOBODY, NOBODY)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!" + interp), "pre")
    assert chk.problem and "directory %s" % theirs in chk.problem.message


def test_root_controlled_interpreter_accepted_and_runs(safe_dir):
    interp = write_interpreter(safe_dir / "interp")
    chk = policy.check_script(write_script(safe_dir / "a", "echo ok", shebang="#!" + interp), "pre")
    assert chk.ok and chk.argv_prefix == (str(safe_dir / "a"),)
    assert run_checked(chk).output == "ok\n"


def test_relative_interpreter_refused(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!sh"), "pre")
    assert chk.problem and "sh: not a full path" in chk.problem.message


def test_missing_interpreter_reported_the_script_still_checked_ok(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!/nonexistent/sh"),
                              "post")
    assert chk.ok and "/nonexistent/sh" in chk.hint
    assert [p.code for p in chk.check_problems] == ["Post-ScriptExecutionFailed"]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_sh_is_checked_for_a_script_without_execute_bit(safe_dir, tmp_path, monkeypatch, mode):
    fake_sh = write_interpreter(tmp_path / "sh", owner=NOBODY)
    monkeypatch.setattr(policy, "SH", fake_sh)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", mode=mode), "pre")
    assert chk.problem and "runs %s" % fake_sh in chk.problem.message


def chain(directory, levels, body="echo ran"):
    """A script whose #! names a script whose #! names ... LEVELS nested #! scripts, then sh."""
    interp = "/bin/sh"
    for i in range(levels):
        interp = write_script(directory / ("i%d" % i), "", shebang="#!" + interp, mode=0o755)
    return write_script(directory / "script", body, shebang="#!" + interp)


def test_nested_interpreters_as_deep_as_the_kernel_allows_run(safe_dir):
    chk = policy.check_script(chain(safe_dir, 4), "pre")
    assert chk.ok
    assert run_checked(chk).exit_code == 0


def test_nested_interpreters_deeper_than_the_kernel_allows_refused(safe_dir):
    chk = policy.check_script(chain(safe_dir, 5), "pre")
    assert chk.problem.code == "InsufficientPermissionforPre-Script"
    assert "nested more than 4 deep" in chk.problem.message
    res = run_process([chain(safe_dir, 5)], timeout=30)   # the kernel agrees (ELOOP)
    assert res.spawn_error and "Too many levels" in res.spawn_error


def test_nested_interpreter_owned_by_a_user_refused(safe_dir):
    script = chain(safe_dir, 3)
    os.chown(safe_dir / "i1", NOBODY, NOBODY)
    chk = policy.check_script(script, "pre")
    assert chk.problem and "runs %s" % (safe_dir / "i1") in chk.problem.message


# -- #!/usr/bin/env X: X as found on the trusted PATH ---------------------------

ENV = shutil.which("env", path="/usr/bin:/bin")


@pytest.fixture
def path_dirs(tmp_path, monkeypatch):
    """A root-controlled directory and a user's directory, both put first in
    the standard PATH list."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    for d in (ours, theirs):
        d.mkdir()
        os.chmod(d, 0o755)
    os.chown(theirs, NOBODY, NOBODY)
    monkeypatch.setattr(policy, "STANDARD_PATH", (str(theirs), str(ours)) + policy.STANDARD_PATH)
    return ours, theirs


def test_trusted_search_path_keeps_only_root_controlled_directories(tmp_path, monkeypatch):
    dirs = {name: tmp_path / name for name in ("good", "open", "sticky", "theirs", "under")}
    for name, mode in (("good", 0o755), ("open", 0o777), ("sticky", 0o1777), ("theirs", 0o755)):
        dirs[name].mkdir()
        os.chmod(dirs[name], mode)
    os.chown(dirs["theirs"], NOBODY, NOBODY)
    under = dirs["theirs"] / "bin"
    under.mkdir(mode=0o755)
    dirs["under"] = under
    monkeypatch.setattr(policy, "STANDARD_PATH", tuple(str(d) for d in dirs.values()) +
                        (str(tmp_path / "missing"), "/usr/bin"))
    assert policy.trusted_search_path() == "%s:/usr/bin" % dirs["good"]


def test_real_trusted_search_path_has_the_system_directories():
    assert "/usr/bin" in policy.trusted_search_path().split(":")


def test_env_program_in_a_user_directory_is_never_found(safe_dir, path_dirs, tmp_path):
    ours, theirs = path_dirs
    marker = tmp_path / "pwned"
    evil = write_script(theirs / "vmsnap-test-interp", "touch %s" % marker, mode=0o755)
    os.chown(evil, NOBODY, NOBODY)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0",
                                           shebang="#!%s vmsnap-test-interp" % ENV), "pre")
    assert str(theirs) not in policy.trusted_search_path().split(":")
    assert chk.ok and "not on the trusted PATH" in chk.hint
    assert run_checked(chk).exit_code == 127 and not marker.exists()


def test_env_program_on_the_trusted_path_accepted_and_runs(safe_dir, path_dirs):
    ours, _ = path_dirs
    write_interpreter(ours / "vmsnap-test-interp")
    chk = policy.check_script(write_script(safe_dir / "a", "echo ok",
                                           shebang="#!%s vmsnap-test-interp" % ENV), "pre")
    assert chk.ok and chk.hint is None
    assert run_checked(chk).output == "ok\n"


def test_env_program_whose_interpreter_a_user_owns_refused(safe_dir, path_dirs, tmp_path):
    ours, _ = path_dirs
    theirs_interp = write_interpreter(tmp_path / "their-sh", owner=NOBODY)
    write_script(ours / "vmsnap-test-interp", "", shebang="#!" + theirs_interp, mode=0o755)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0",
                                           shebang="#!%s vmsnap-test-interp" % ENV), "pre")
    assert chk.problem and "runs %s" % theirs_interp in chk.problem.message


def test_env_split_string_checks_the_program(safe_dir, path_dirs):
    ours, _ = path_dirs
    write_interpreter(ours / "vmsnap-test-interp", owner=NOBODY)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0",
                                           shebang="#!%s -S vmsnap-test-interp -e" % ENV), "pre")
    assert chk.problem and "runs %s" % (ours / "vmsnap-test-interp") in chk.problem.message


def test_env_with_options_it_cannot_follow_refused(safe_dir):
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!%s -i sh" % ENV),
                              "pre")
    assert chk.problem and "cannot tell which program" in chk.problem.message


def test_env_chain_that_loops_refused(safe_dir, path_dirs):
    ours, _ = path_dirs
    write_script(ours / "vmsnap-test-loop", "", shebang="#!%s vmsnap-test-loop" % ENV, mode=0o755)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0",
                                           shebang="#!%s vmsnap-test-loop" % ENV), "pre")
    assert chk.problem and "too many programs" in chk.problem.message


def test_env_itself_is_checked(safe_dir, tmp_path):
    their_env = write_interpreter(tmp_path / "env", owner=NOBODY)
    chk = policy.check_script(write_script(safe_dir / "a", "exit 0", shebang="#!%s sh" % their_env),
                              "pre")
    assert chk.problem and "runs %s" % their_env in chk.problem.message


def test_a_hook_run_carries_the_policy_hint(safe_dir):
    path = safe_dir / "10-app"
    path.write_bytes(b"#!/bin/sh\r\nexit 3\r\n")
    os.chmod(path, 0o700)
    run = hooks.run_hook(hooks.Hook("10-app", str(path)), "freeze", retries=0, timeout=30)
    assert run.result.ran and "Windows line endings" in run.hint


def test_scripts_get_only_the_trusted_search_path(tmp_path, monkeypatch):
    """A PATH directory a user could write is not what scripts search (issue 10.2)."""
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    monkeypatch.setattr(policy, "STANDARD_PATH", (str(theirs), "/usr/bin", "/bin"))
    r = run_process(["/bin/sh", "-c", 'echo "$PATH"'], timeout=10)
    assert r.output.strip() == "/usr/bin:/bin"
