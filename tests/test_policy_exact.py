"""The permission policy's exact answers: codes, messages (they name the
path and the reason), and the path resolver's edge cases (".", "..",
symlink chains and loops).  Fast, for `make mutants`."""

from __future__ import annotations

import os
import pwd
import stat
import types

import pytest

from vmsnap_native import policy

from .conftest import IS_ROOT
from .helpers import write_script

root = pytest.mark.skipif(not IS_ROOT, reason="needs root to own files as root")


def fake_stat(uid=0, mode=0o100600):
    return types.SimpleNamespace(st_uid=uid, st_mode=mode)


# -- the configuration file ---------------------------------------------------------

NOBODY = "uid 65534 (%s)" % pwd.getpwuid(65534).pw_name   # the name is the machine's
UNNAMED = 54321   # a uid with no passwd entry: the message says the number alone


def test_owner_names_the_user_when_there_is_one():
    assert pwd.getpwall() and not any(u.pw_uid == UNNAMED for u in pwd.getpwall())
    assert policy._owner(0) == "uid 0 (root)"
    assert policy._owner(UNNAMED) == "uid 54321"


def test_config_stat_messages():
    assert policy.check_config_stat(fake_stat(0, 0o100600), "/c") is None
    assert policy.check_config_stat(fake_stat(0, 0o100400), "/c") is None
    p = policy.check_config_stat(fake_stat(65534, 0o100644), "/etc/c.json")
    assert p == policy.Problem("InsufficientPermissionforJSONConfigFile",
                               "/etc/c.json: owned by %s, not root, mode 644 (must be 600 "
                               "or 400: no group/other bits, no execute bit)" % NOBODY)
    p = policy.check_config_stat(fake_stat(0, 0o100700), "/c")
    assert p.message == "/c: mode 700 (must be 600 or 400: no group/other bits, no execute bit)"
    p = policy.check_config_stat(fake_stat(UNNAMED, 0o100600), "/c")
    assert p.message == "/c: owned by uid 54321, not root"


def test_unsafe_dir_reasons():
    assert policy._unsafe_dir(fake_stat(0, 0o40755)) is None
    assert policy._unsafe_dir(fake_stat(0, 0o41777)) is None      # sticky, like /tmp
    assert policy._unsafe_dir(fake_stat(0, 0o41777), sticky_ok=False) == (
        "writable by group or others (mode 1777)")
    assert policy._unsafe_dir(fake_stat(0, 0o41755), sticky_ok=False) is None
    assert policy._unsafe_dir(fake_stat(0, 0o40775)) == "writable by group or others (mode 775)"
    assert policy._unsafe_dir(fake_stat(0, 0o40757)) == "writable by group or others (mode 757)"
    assert policy._unsafe_dir(fake_stat(UNNAMED, 0o40755)) == "owned by uid 54321, not root"


def test_script_check_defaults_and_ok():
    chk = policy.ScriptCheck(path="/x", role="pre")
    assert chk.problem is None and chk.argv_prefix == () and chk.resolved is None
    assert chk.ok is True
    chk.problem = policy.Problem("c", "m")
    assert chk.ok is False


# -- the resolver ---------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(d, 0o755)
    return d


def resolved(path):
    """Where PATH leads, checking that the stat returned is that file's own."""
    where, st = policy.resolve_checked(path)
    assert (st.st_dev, st.st_ino) == (os.lstat(where).st_dev, os.lstat(where).st_ino)
    return where


def refused(path, exc_type=policy.Unsafe):
    with pytest.raises(exc_type) as ei:
        policy.resolve_checked(path)
    return ei.value


def test_an_unsafe_root_directory_is_named(monkeypatch):
    real_open = policy._Walk._open

    def open_with_a_writable_root(self, name, dir_fd):
        fd, st = real_open(self, name, dir_fd)
        return (fd, fake_stat(0, 0o40777)) if name == "/" else (fd, st)

    monkeypatch.setattr(policy._Walk, "_open", open_with_a_writable_root)
    assert str(refused("/etc/x")) == (
        "directory / on the path of /etc/x is writable by group or others (mode 777)")


def test_relative_path_is_refused():
    assert str(refused("etc/x")) == "etc/x: not a full path"
    chk = policy.check_script("etc/x", "post")
    assert chk.problem == policy.Problem(
        "Post-ScriptNotFound", "etc/x: not a full path; the script location must be a full path "
        "starting with / (vmsnap does not expand ~ or look in any directory)")
    assert chk.argv_prefix == () and chk.resolved is None


@root
def test_dot_and_dotdot_components(tree):
    (tree / "sub").mkdir()
    os.chmod(tree / "sub", 0o755)
    target = write_script(tree / "s", "exit 0")
    assert resolved("%s/./s" % tree) == target
    assert resolved("%s/sub/../s" % tree) == target
    assert resolved("/..%s/s" % tree) == target   # .. of / is /
    (tree / "X").mkdir()   # a name of one repeated letter: ".." is one level up, exactly
    os.chmod(tree / "X", 0o755)
    assert resolved("%s/X/../s" % tree) == target
    # ".." goes up from where the link led, not from the link's own name
    os.symlink(str(tree / "sub"), tree / "to-sub")
    assert resolved("%s/to-sub/../s" % tree) == target
    # a path that ends in a directory (or "/.") resolves to it
    assert resolved("%s/sub/." % tree) == "%s/sub" % tree
    assert resolved("/") == "/"


@root
def test_symlink_chains_up_to_40_and_loops(tree):
    target = write_script(tree / "s", "exit 0")
    prev = "s"
    for i in range(40):   # l39 -> ... -> l0 -> s: 40 links, accepted
        os.symlink(prev, tree / ("l%d" % i))
        prev = "l%d" % i
    assert resolved("%s/l39" % tree) == target
    os.symlink("l39", tree / "l40")   # 41 links
    path = "%s/l40" % tree
    assert str(refused(path)) == "%s: too many levels of symbolic links" % path
    os.symlink("loop", tree / "loop")
    loop = "%s/loop" % tree
    assert str(refused(loop)) == "%s: too many levels of symbolic links" % loop
    # an absolute target restarts from /
    os.symlink(str(tree / "s"), tree / "abs")
    assert resolved("%s/abs" % tree) == target


@root
def test_a_symlink_not_owned_by_root_is_refused(tree):
    write_script(tree / "s", "exit 0")
    os.symlink("s", tree / "theirs")
    os.lchown(tree / "theirs", UNNAMED, UNNAMED)
    path = "%s/theirs" % tree
    assert str(refused(path)) == (
        "symlink %s on the path of %s is owned by uid 54321, not root" % (path, path))
    chk = policy.check_script(path, "pre")
    assert chk.problem == policy.Problem(
        "InsufficientPermissionforPre-Script",
        "symlink %s on the path of %s is owned by uid 54321, not root" % (path, path))


@root
def test_file_in_the_middle_and_unsafe_directory(tree):
    write_script(tree / "f", "exit 0")
    exc = refused("%s/f/s" % tree, NotADirectoryError)
    assert (exc.strerror, exc.filename) == ("not a directory", "%s/f" % tree)
    assert policy.check_script("%s/f/s" % tree, "post").problem == policy.Problem(
        "Post-ScriptNotFound", "%s/f/s: not a directory" % tree)
    (tree / "open").mkdir()
    os.chmod(tree / "open", 0o777)
    write_script(tree / "open" / "s", "exit 0")
    assert str(refused("%s/open/s" % tree)) == (
        "directory %s/open on the path of %s/open/s is writable by group or others "
        "(mode 777)" % (tree, tree))


@root
def test_scripts_own_directory_must_be_root_only(tree):
    # sticky is fine on the way, not for the directory holding what runs
    (tree / "st").mkdir()
    os.chmod(tree / "st", 0o1777)
    s = write_script(tree / "st" / "s", "exit 0")
    assert resolved(s) == s
    chk = policy.check_script(s, "pre")
    assert chk.problem == policy.Problem(
        "InsufficientPermissionforPre-Script",
        "directory %s/st holding %s is writable by group or others (mode 1777): anyone could "
        "put a file beside it that it reads (a module, a library); move it to a directory "
        "only root can write" % (tree, s))
    hook = policy.check_hook(s, "post")
    assert hook.problem == policy.Problem(
        "InsufficientPermissionforPost-Script",
        "hooks directory %s/st is writable by group or others (mode 1777): anyone could add a "
        "hook (chmod 755)" % tree)
    os.chmod(tree / "st", 0o755)
    assert policy.check_hook(s, "post").ok is True


# -- check_script -----------------------------------------------------------------------

def test_empty_location_names_the_role():
    for role, tag in (("pre", "Pre"), ("post", "Post"), ("hook", "Pre")):
        chk = policy.check_script("", role)
        assert chk.problem == policy.Problem("%s-ScriptNotFound" % tag,
                                             "%sScriptLocation is empty" % role)
        assert chk.ok is False and chk.argv_prefix == ()


@root
def test_not_found_messages(tree):
    missing = "%s/nope" % tree
    chk = policy.check_script(missing, "post")
    assert chk.problem == policy.Problem("Post-ScriptNotFound", "%s: No such file or directory" % missing)
    long_name = "%s/%s" % (tree, "x" * 300)
    chk = policy.check_script(long_name, "pre")
    assert chk.problem == policy.Problem("Pre-ScriptNotFound", "%s: File name too long" % long_name)
    chk = policy.check_script(str(tree), "hook")
    assert chk.problem == policy.Problem("Pre-ScriptNotFound", "%s: not a regular file" % tree)


@root
def test_every_permission_problem_in_one_message(tree):
    s = write_script(tree / "s", "exit 0")
    os.chown(s, 65534, 65534)
    os.chmod(s, 0o4777)
    chk = policy.check_script(s, "post")
    assert chk.problem == policy.Problem(
        "InsufficientPermissionforPost-Script",
        "%s: owned by %s, not root, mode 4777 has group/other bits (use 700; 500, 600, "
        "400 accepted), setuid/setgid bit set (mode 4777)" % (s, NOBODY))
    assert chk.resolved is None and chk.argv_prefix == ()
    os.chown(s, 0, 0)
    os.chmod(s, 0o2700)
    chk = policy.check_script(s, "pre")
    assert chk.problem.message == "%s: setuid/setgid bit set (mode 2700)" % s


@root
def test_accepted_script_modes_and_how_they_run(tree):
    for mode, argv in ((0o700, None), (0o500, None), (0o600, "/bin/sh"), (0o400, "/bin/sh")):
        s = write_script(tree / ("m%o" % mode), "exit 0", mode=mode)
        chk = policy.check_script(s, "pre")
        assert chk.ok is True and chk.problem is None and chk.resolved == s
        assert chk.argv_prefix == ((s,) if argv is None else (argv, s))
    assert stat.S_IMODE(os.stat(tree / "m700").st_mode) == 0o700


# -- what runs: the trusted PATH, the #! head, chains of programs ---------------------

def test_the_standard_path_in_its_order():
    assert policy.STANDARD_PATH == (
        "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
    if all(policy._trusted_dir(d) for d in policy.STANDARD_PATH):   # as on a stock system
        assert policy.trusted_search_path() == (
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")


@root
def test_the_shebang_line_is_read_as_far_as_the_kernel_reads_it(tree):
    # the kernel reads 256 bytes for the #! line: a longer name is cut there
    s = write_script(tree / "s", "exit 0", shebang="#!/usr/bin/env " + "n" * 300)
    chk = policy.check_script(s, "pre")
    assert chk.ok is True and chk.argv_prefix == (s,)
    assert [p.message for p in chk.check_problems] == [
        "/usr/bin/env %s runs %r, which is not on the trusted PATH (%s)"
        % ("n" * 241, "n" * 241, policy.trusted_search_path())]
    assert chk.hint == chk.check_problems[0].message


@root
@pytest.mark.parametrize("inner,ok", [(False, True), (True, False)])
def test_a_chain_of_programs_is_bounded(tree, inner, ok):
    # each `#!/usr/bin/env /full/path` is two programs (env, then the one it runs) and
    # a #! interpreter one: six env links and /bin/sh are 13 programs, the most there
    # may be; one more #! interpreter is one too many
    prev = write_script(tree / "end", "exit 0", shebang="#!%s" % (
        write_script(tree / "inner", "exit 0") if inner else "/bin/sh"))
    for i in range(6):
        prev = write_script(tree / ("p%d" % i), "exit 0", shebang="#!/usr/bin/env %s" % prev)
    chk = policy.check_script(prev, "post")
    if ok:
        assert chk.ok is True and chk.argv_prefix == (prev,) and chk.check_problems == []
    else:
        assert chk.problem == policy.Problem(
            "InsufficientPermissionforPost-Script",
            "%s: too many programs in its chain (a loop?)" % prev)
