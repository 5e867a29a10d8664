"""The permission policy's exact answers: codes, messages (they name the
path and the reason), and the path resolver's edge cases (".", "..",
symlink chains and loops).  Fast, for `make mutants`."""

from __future__ import annotations

import errno
import os
import pwd
import stat
import threading
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


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@root
def test_a_walk_leaves_no_fd_open_and_dotdot_climbs_one_level(tree):
    target = write_script(tree / "s", "exit 0")
    before = open_fds()
    for _ in range(3):
        resolved(target)
        refused("%s/nope" % tree, FileNotFoundError)
    assert open_fds() == before
    top = "/" + str(tree).split("/")[1]   # "/tmp/..": back to / from the first level
    assert resolved("%s/..%s/s" % (top, tree)) == target
    exc = refused("%s/s/x" % tree, NotADirectoryError)
    assert (exc.errno, exc.strerror) == (20, "not a directory")


def test_the_shebang_line_as_the_kernel_splits_it():
    assert policy._shebang(b"#!/bin/sh") == ("/bin/sh", None)
    assert policy._shebang(b"#! \t/bin/sh \t-e  x \t") == ("/bin/sh", "-e  x")
    assert policy._shebang(b"#!/usr/bin/env python3") == ("/usr/bin/env", "python3")
    assert policy._shebang(b"#!") is None and policy._shebang(b"#!  ") is None
    assert policy._shebang(b"echo") is None and policy._shebang(b" #!/bin/sh") is None


def test_which_program_env_runs():
    assert policy._env_command(None, "w") is None
    assert policy._env_command("python3", "w") == "python3"
    assert policy._env_command("x'y", "w") == "x'y"   # no -S: the word is taken as it is
    assert policy._env_command("-S python3 -u", "w") == "python3"
    assert policy._env_command("-S  /usr/bin/perl", "w") == "/usr/bin/perl"
    for arg in ("-i", "A=1", "-S", "-S -i x", "-S A=1 x", "-S 'x'", '-S "x"', "-S x\\_y",
                "-S ${X}"):
        with pytest.raises(policy.Unsafe) as ei:
            policy._env_command(arg, "the #! line of /s")
        assert str(ei.value) == ("the #! line of /s: cannot tell which program `env %s` runs; "
                                 "name the interpreter by its full path" % arg)


@root
def test_what_the_shebang_names_is_checked(tree):
    (tree / "d").mkdir()
    s = write_script(tree / "nodir", "exit 0", shebang="#!%s/d" % tree)
    chk = policy.check_script(s, "post")
    why = "the #! line of %s names %s/d: not a regular file" % (s, tree)
    assert chk.ok is True and chk.argv_prefix == (s,) and chk.hint == why
    assert chk.check_problems == [policy.Problem("Post-ScriptExecutionFailed", why)]
    s = write_script(tree / "missing", "exit 0", shebang="#!%s/none" % tree)
    assert policy.check_script(s, "hook").check_problems == [policy.Problem(
        "Pre-ScriptExecutionFailed",
        "the #! line of %s names %s/none: No such file or directory" % (s, tree))]
    for owner, mode, who in ((UNNAMED, 0o755, "uid 54321"), (0, 0o775, "uid 0 (root)"),
                             (0, 0o757, "uid 0 (root)")):
        interp = write_script(tree / "interp", "exit 0", mode=mode)
        os.chown(interp, owner, 0)
        os.chmod(interp, mode)
        s = write_script(tree / "s", "exit 0", shebang="#!%s" % interp)
        chk = policy.check_script(s, "pre")
        assert chk.problem == policy.Problem(
            "InsufficientPermissionforPre-Script",
            "the #! line of %s runs %s: %s, mode %o (must be root-owned, not writable by group "
            "or others)" % (s, interp, who, mode))
        assert (chk.argv_prefix, chk.resolved, chk.hint, chk.check_problems) == ((), None, None, [])
    # a root-owned 755 interpreter in a sticky directory: anyone could add files beside it
    (tree / "st").mkdir()
    os.chmod(tree / "st", 0o1777)
    interp = write_script(tree / "st" / "i", "exit 0", mode=0o755)
    s = write_script(tree / "s2", "exit 0", shebang="#!%s" % interp)
    assert policy.check_script(s, "pre").problem.message == (
        "the #! line of %s runs %s: directory %s/st holding %s is writable by group or others "
        "(mode 1777): anyone could put a file beside it that it reads (a module, a library); "
        "move it to a directory only root can write" % (s, interp, tree, interp))


@root
@pytest.mark.parametrize("depth,ok", [(4, True), (5, False)])
def test_nested_interpreters_to_the_kernels_depth(tree, depth, ok):
    prev = write_script(tree / "i0", "exit 0", mode=0o755)   # #!/bin/sh: the last
    for i in range(1, depth + 1):
        prev = write_script(tree / ("i%d" % i), "exit 0", shebang="#!%s" % prev,
                            mode=0o755 if i < depth else 0o700)
    chk = policy.check_script(prev, "pre")
    if ok:
        assert chk.ok is True and chk.argv_prefix == (prev,) and chk.check_problems == []
    else:
        assert chk.problem.message == (
            "%s: #! interpreters nested more than 4 deep (the kernel refuses that)" % prev)


@root
def test_how_a_script_runs(tree):
    def plan(name, content, mode):
        path = str(tree / name)
        with open(path, "wb") as f:
            f.write(content)
        os.chmod(path, mode)
        chk = policy.check_script(path, "pre")
        assert chk.ok is True and chk.resolved == path
        return chk.argv_prefix, chk.hint
    elf = open("/bin/sh", "rb").read(64)
    assert plan("a", b"#!/bin/sh\nexit 0\n", 0o700) == (("%s/a" % tree,), None)
    assert plan("b", b"#!/bin/sh\nexit 0\n", 0o600) == ((policy.SH, "%s/b" % tree), None)
    assert plan("c", b"exit 0\n", 0o700) == ((policy.SH, "%s/c" % tree), None)
    assert plan("d", elf, 0o700) == (("%s/d" % tree,), None)
    assert plan("e", elf, 0o600) == ((policy.SH, "%s/e" % tree), None)
    assert plan("f", b"#!\nexit 0\n", 0o700) == ((policy.SH, "%s/f" % tree), None)
    f = "%s/g" % tree
    assert plan("g", b"#!/bin/sh\r\nexit 0\r\n", 0o700) == ((policy.SH, f), (
        "the script has Windows line endings (CRLF): its #! line names '/bin/sh\\r'; convert it "
        "with `sed -i 's/\\r$//' %s` or `dos2unix %s`" % (f, f)))
    f = "%s/h" % tree
    assert plan("h", b"exit 0\r\n", 0o500) == ((policy.SH, f), (
        "the script has Windows line endings (CRLF); convert it with `sed -i 's/\\r$//' %s` "
        "or `dos2unix %s`" % (f, f)))


@root
def test_a_hook_directory_that_is_not_a_directory_is_left_to_the_script_check(tree):
    write_script(tree / "f", "exit 0")
    chk = policy.check_hook("%s/f/h" % tree, "post")
    assert chk.problem == policy.Problem("Post-ScriptNotFound", "%s/f/h: not a directory" % tree)
    chk = policy.check_hook("%s/none/h" % tree, "pre")
    assert chk.problem == policy.Problem("Pre-ScriptNotFound",
                                         "%s/none/h: No such file or directory" % tree)


@root
def test_the_head_is_read_from_the_checked_file_only(tree):
    target = write_script(tree / "s", "exit 0")
    st = os.stat(target)
    assert policy._read_head(target, st) == b"#!/bin/sh\nexit 0\n"
    # swapped for a symlink after the walk: not followed, even to the same file
    os.symlink(target, tree / "link")
    with pytest.raises(OSError) as ei:
        policy._read_head(str(tree / "link"), st)
    assert ei.value.errno == errno.ELOOP
    # swapped for another file
    other = write_script(tree / "other", "exit 0")
    with pytest.raises(policy.Unsafe) as ei:
        policy._read_head(other, st)
    assert str(ei.value) == "%s changed while it was checked" % other
    # swapped for a FIFO: opened without waiting for a writer
    os.mkfifo(tree / "fifo")
    got = []
    reader = threading.Thread(target=lambda: got.append(
        policy._read_head(str(tree / "fifo"), os.stat(tree / "fifo"))), daemon=True)
    reader.start()
    reader.join(10)
    assert got == [b""]


def test_the_crlf_hint_names_what_the_kernel_would_look_for():
    assert policy._crlf_hint("/s", b"#! \tXY\r") == (
        "the script has Windows line endings (CRLF): its #! line names 'XY\\r'; convert it "
        "with `sed -i 's/\\r$//' /s` or `dos2unix /s`")


def test_env_split_strings_are_read_as_env_reads_them():
    assert policy._env_command("-Spython3 -u", "w") == "python3"   # -S joined to its text
    assert policy._env_command("-S X11prog", "w") == "X11prog"


@root
def test_what_env_is_asked_to_run(tree, monkeypatch):
    s = write_script(tree / "s", "exit 0", shebang="#!/usr/bin/env %s/none" % tree)
    assert [p.message for p in policy.check_script(s, "pre").check_problems] == [
        "/usr/bin/env %s/none names %s/none: No such file or directory" % (tree, tree)]
    # on the trusted PATH only an executable file counts, not a directory or a plain file
    (tree / "bin").mkdir()
    monkeypatch.setattr(policy, "STANDARD_PATH", (str(tree / "bin"),))
    (tree / "bin" / "adir").mkdir()
    write_script(tree / "bin" / "plain", "exit 0", mode=0o644)
    write_script(tree / "bin" / "prog", "exit 0", mode=0o755)
    for name in ("adir", "plain"):
        s = write_script(tree / "s", "exit 0", shebang="#!/usr/bin/env %s" % name)
        chk = policy.check_script(s, "pre")
        assert chk.ok and [p.message for p in chk.check_problems] == [
            "/usr/bin/env %s runs %r, which is not on the trusted PATH (%s/bin)" % (name, name, tree)]
    s = write_script(tree / "s", "exit 0", shebang="#!/usr/bin/env prog")
    chk = policy.check_script(s, "pre")
    assert chk.ok is True and chk.check_problems == [] and chk.hint is None


@root
def test_an_interpreter_reached_through_someone_elses_directory(tree):
    (tree / "theirs").mkdir()
    interp = write_script(tree / "theirs" / "i", "exit 0", mode=0o755)
    os.chown(tree / "theirs", UNNAMED, UNNAMED)
    s = write_script(tree / "s", "exit 0", shebang="#!%s" % interp)
    assert policy.check_script(s, "post").problem == policy.Problem(
        "InsufficientPermissionforPost-Script",
        "the #! line of %s runs %s: directory %s/theirs on the path of %s is owned by uid 54321, "
        "not root" % (s, interp, tree, interp))


def interpreter_chain(tree, depth):
    """i{depth} -> ... -> i0 -> /bin/sh: DEPTH nested #! interpreters below i{depth}."""
    prev = write_script(tree / "i0", "exit 0", mode=0o755)
    for i in range(1, depth + 1):
        prev = write_script(tree / ("i%d" % i), "exit 0", shebang="#!%s" % prev, mode=0o755)
    return prev


@root
def test_a_new_exec_starts_the_nesting_count_again(tree, monkeypatch):
    top = interpreter_chain(tree, 3)   # as deep as the kernel allows below one exec
    s = write_script(tree / "s", "exit 0", shebang="#!/usr/bin/env %s" % top)
    chk = policy.check_script(s, "pre")
    assert chk.ok is True and chk.check_problems == []
    # /bin/sh running a plain script is a new exec too
    monkeypatch.setattr(policy, "SH", top)
    plain = write_script(tree / "plain", "exit 0", shebang=None)
    chk = policy.check_script(plain, "pre")
    assert chk.ok is True and chk.argv_prefix == (top, plain)


@root
def test_a_program_chain_counted_from_sh(tree, monkeypatch):
    # sh is the first program: 5 env links, a #! interpreter and /bin/sh make 13
    prev = write_script(tree / "end", "exit 0", shebang="#!%s" % write_script(tree / "inner", "exit 0"))
    for i in range(5):
        prev = write_script(tree / ("p%d" % i), "exit 0", shebang="#!/usr/bin/env %s" % prev,
                            mode=0o755)
    monkeypatch.setattr(policy, "SH", prev)
    plain = write_script(tree / "plain", "exit 0", shebang=None)
    chk = policy.check_script(plain, "post")
    assert chk.ok is True and chk.argv_prefix == (prev, plain)


@root
def test_a_nested_interpreter_is_named_with_the_line_that_names_it(tree):
    top = interpreter_chain(tree, 2)
    os.chown(tree / "i0", UNNAMED, 0)
    s = write_script(tree / "s", "exit 0", shebang="#!%s" % top)
    assert policy.check_script(s, "pre").problem.message == (
        "the #! line of %s runs %s/i0: uid 54321, mode 755 (must be root-owned, not writable by "
        "group or others)" % (tree / "i1", tree))
