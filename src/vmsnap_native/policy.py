"""Permission policy (SPEC §2): what vmsnap agrees to run as root.

Every object that decides what runs is root-controlled, so that nobody but
root can change what runs between the check and the exec:

- the configuration file: root-owned, 600 or 400;
- the script: root-owned, no group/other bits, no setuid/setgid bit;
- every directory on its path as it resolves: root-owned and not writable by
  group or others (a sticky directory like /tmp is fine: nobody else can
  rename or replace the root-owned entry below it);
- every symlink followed: root-owned (``fs.protected_symlinks`` is not
  relied on; many containers turn it off);
- what the kernel runs for the script: its ``#!`` interpreter, nested ``#!``
  chains (as deep as the kernel allows), the program ``#!/usr/bin/env X``
  finds on the trusted PATH, and ``/bin/sh`` for a script run through it:
  walked by the same rules, root-owned, not writable by group or others.

The walk opens one component at a time with O_PATH|O_NOFOLLOW, relative to
the directory already checked (as systemd's chase() does), so a checked
prefix is never resolved again.  A script runs directly only when it is
executable and starts with ``#!`` (or is an ELF binary); anything else runs
as ``/bin/sh PATH``, as Azure does, so ``$0`` stays the configured path.  A
first line ending in CR (Windows line endings) runs through ``/bin/sh`` too,
and is reported with the fix (``ScriptCheck.hint``).
"""

from __future__ import annotations

import os
import pwd
import re
import stat

from ._record import Record

MAX_SYMLINKS = 40             # the kernel's limit for one path (ELOOP)
MAX_NESTED_INTERPRETERS = 4   # #! interpreters that are #! scripts themselves: the kernel's limit
MAX_PROGRAMS = 12             # a bound on env hops, so a chain that loops ends
HEAD_BYTES = 256              # what the kernel reads for the #! line (BINPRM_BUF_SIZE)
SH = "/bin/sh"
ELF_MAGIC = b"\x7fELF"
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_O_WALK = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class Unsafe(Exception):
    """Something on the way to what runs is not root-controlled; str() says what."""


class Problem(Record):
    __slots__ = ("code", "message")
    code: str
    message: str

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message


class ScriptCheck(Record):
    __slots__ = ("path", "role", "problem", "argv_prefix", "resolved", "hint", "check_problems")
    path: str
    role: str                 # "pre" or "post" (or "hook")
    problem: Problem | None
    argv_prefix: tuple[str, ...]   # what to exec: (path,) or ("/bin/sh", path)
    resolved: str | None
    # why a run of this script will likely fail (Windows line endings, a
    # missing interpreter): for the run's failure message
    hint: str | None
    # problems `vmsnap check` reports for a script that still runs
    check_problems: list[Problem]

    def __init__(self, path: str, role: str, problem: Problem | None = None,
                 argv_prefix: tuple[str, ...] = (), resolved: str | None = None,
                 hint: str | None = None, check_problems: list[Problem] | None = None) -> None:
        self.path = path
        self.role = role
        self.problem = problem
        self.argv_prefix = argv_prefix
        self.resolved = resolved
        self.hint = hint
        self.check_problems = [] if check_problems is None else check_problems

    @property
    def ok(self) -> bool:
        return self.problem is None


def _mode(st: os.stat_result) -> str:
    return "%o" % stat.S_IMODE(st.st_mode)


def _owner(uid: int) -> str:
    try:
        return "uid %d (%s)" % (uid, pwd.getpwuid(uid).pw_name)
    except KeyError:
        return "uid %d" % uid


def check_config_stat(st: os.stat_result, path: str) -> Problem | None:
    bad = []
    if st.st_uid != 0:
        bad.append("owned by %s, not root" % _owner(st.st_uid))
    if stat.S_IMODE(st.st_mode) & 0o177:
        bad.append("mode %s (must be 600 or 400: no group/other bits, no execute bit)" % _mode(st))
    if bad:
        return Problem("InsufficientPermissionforJSONConfigFile", "%s: %s" % (path, ", ".join(bad)))
    return None


def _unsafe_dir(st: os.stat_result, sticky_ok: bool = True) -> str | None:
    if st.st_uid != 0:
        return "owned by %s, not root" % _owner(st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not (sticky_ok and mode & stat.S_ISVTX):
        return "writable by group or others (mode %s)" % _mode(st)
    return None


def _components(path: str) -> list[str]:
    return [c for c in path.split("/") if c and c != "."]


class _Walk:
    """One path walk: the checked directories from / down, as O_PATH fds."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fds: list[int] = []      # every fd opened, closed when the walk ends
        self.stack: list[tuple[str, int]] = []    # (path, fd) of the directories entered
        self.links = 0

    def __enter__(self) -> _Walk:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds:
            os.close(fd)

    def _open(self, name: str, dir_fd: int | None) -> tuple[int, os.stat_result]:
        fd = os.open(name, _O_WALK, dir_fd=dir_fd)
        self.fds.append(fd)
        return fd, os.fstat(fd)

    def _enter(self, where: str, fd: int, st: os.stat_result) -> None:
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(20, "not a directory", where)
        why = _unsafe_dir(st)
        if why:
            raise Unsafe("directory %s on the path of %s is %s" % (where, self.path, why))
        self.stack.append((where, fd))

    def _to_root(self) -> None:
        self.stack = []
        fd, st = self._open("/", None)
        self._enter("/", fd, st)

    def _link(self, where: str, fd: int, st: os.stat_result) -> list[str]:
        """The components a symlink stands for, once it passed the policy."""
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise Unsafe("%s: too many levels of symbolic links" % self.path)
        if st.st_uid != 0:
            raise Unsafe("symlink %s on the path of %s is owned by %s, not root"
                         % (where, self.path, _owner(st.st_uid)))
        target = os.readlink("", dir_fd=fd)   # the link we checked, not its name again
        if target.startswith("/"):
            self._to_root()
        return _components(target)

    def follow(self) -> tuple[str, os.stat_result]:
        self._to_root()
        pending = _components(self.path)
        while pending:
            name = pending.pop(0)
            if name == "..":
                if len(self.stack) > 1:
                    self.stack.pop()
                continue
            here, dir_fd = self.stack[-1]
            where = os.path.join(here, name)
            fd, st = self._open(name, dir_fd)
            if stat.S_ISLNK(st.st_mode):
                pending[:0] = self._link(where, fd, st)
            elif pending:
                self._enter(where, fd, st)
            else:
                return where, st
        where, fd = self.stack[-1]
        return where, os.fstat(fd)


def resolve_checked(path: str) -> tuple[str, os.stat_result]:
    """Follows the full PATH from /, one component at a time, refusing what
    is not root-controlled.  Returns (resolved path, stat of the final
    object, not followed).  Raises Unsafe naming the first offending
    directory or symlink and its owner; FileNotFoundError,
    NotADirectoryError or another OSError when the path does not resolve."""
    if not path.startswith("/"):
        raise Unsafe("%s: not a full path" % path)
    with _Walk(path) as walk:
        return walk.follow()


def _trusted_dir(directory: str) -> bool:
    try:
        _, st = resolve_checked(directory)
    except (Unsafe, OSError):
        return False
    return stat.S_ISDIR(st.st_mode) and _unsafe_dir(st, sticky_ok=False) is None


def trusted_search_path() -> str:
    """The PATH for everything vmsnap runs: the standard directories that
    exist and pass the policy (root-owned, not writable by group or others,
    every directory and symlink from / too), in the standard order."""
    return ":".join(d for d in STANDARD_PATH if _trusted_dir(d))


def _read_head(path: str, st: os.stat_result) -> bytes:
    """The first bytes of the file PATH, which must still be ST's file."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise Unsafe("%s changed while it was checked" % path)
        return os.read(fd, HEAD_BYTES)
    finally:
        os.close(fd)


def _shebang(first_line: bytes) -> tuple[str, str | None] | None:
    """(interpreter, its one argument or None) as the kernel splits a #! line."""
    if not first_line.startswith(b"#!"):
        return None
    m = re.match(rb"[ \t]*([^ \t]*)[ \t]*(.*?)[ \t]*$", first_line[2:])
    assert m is not None   # every part of the pattern may be empty: any line matches
    if not m.group(1):
        return None   # "#!" alone: the kernel refuses it; run as a plain sh script
    return os.fsdecode(m.group(1)), os.fsdecode(m.group(2)) or None


def _crlf_hint(path: str, first_line: bytes) -> str:
    named = ""
    if first_line.startswith(b"#!"):
        named = ": its #! line names %r" % os.fsdecode(first_line[2:].strip(b" \t"))
    return ("the script has Windows line endings (CRLF)%s; convert it with "
            "`sed -i 's/\\r$//' %s` or `dos2unix %s`" % (named, path, path))


def _cannot_run(chk: ScriptCheck, why: str) -> None:
    chk.hint = chk.hint or why
    chk.check_problems.append(Problem("%s-ScriptExecutionFailed" % _tag(chk.role), why))


def _env_command(env_arg: str | None, who: str) -> str | None:
    """The program `#!/usr/bin/env ENV_ARG` runs (None: env alone runs nothing)."""
    if env_arg is None:
        return None
    split = env_arg.startswith("-S")
    words = env_arg[2:].split() if split else [env_arg]
    # env -S unquotes, unescapes (\_ is a space) and expands ${VAR} before it
    # searches PATH: a word with that syntax is not the name it will search
    if not words or words[0].startswith("-") or "=" in words[0] or (
            split and any(c in words[0] for c in "\"'\\$")):
        raise Unsafe("%s: cannot tell which program `env %s` runs; name the interpreter "
                     "by its full path" % (who, env_arg))
    return words[0]


def _find_on_trusted_path(chk: ScriptCheck, name: str, who: str) -> str | None:
    if "/" in name:
        return name
    search = trusted_search_path()
    for directory in search.split(":"):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    _cannot_run(chk, "%s runs %r, which is not on the trusted PATH (%s)" % (who, name, search))
    return None


def _check_program(chk: ScriptCheck, program: str, arg: str | None, who: str, nested: int,
                   hops: int) -> None:
    """PROGRAM, which WHO makes the kernel run with ARG: it and what it runs
    in turn (its own #! interpreter, or the program env finds)."""
    if hops > MAX_PROGRAMS:
        raise Unsafe("%s: too many programs in its chain (a loop?)" % chk.path)
    try:
        resolved, st = resolve_checked(program)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(2, "not a regular file")
        first_line = _read_head(resolved, st).split(b"\n", 1)[0]
    except Unsafe as exc:
        raise Unsafe("%s runs %s: %s" % (who, program, exc)) from None
    except OSError as exc:
        _cannot_run(chk, "%s names %s: %s" % (who, program, exc.strerror))
        return
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise Unsafe("%s runs %s: %s, mode %s (must be root-owned, not writable by group or "
                     "others)" % (who, program, _owner(st.st_uid), _mode(st)))
    beside = _holder_problem(resolved, program)
    if beside:
        raise Unsafe("%s runs %s: %s" % (who, program, beside))
    inner = _shebang(first_line)
    if inner:
        if nested >= MAX_NESTED_INTERPRETERS:
            raise Unsafe("%s: #! interpreters nested more than %d deep (the kernel refuses "
                         "that)" % (chk.path, MAX_NESTED_INTERPRETERS))
        _check_program(chk, *inner, "the #! line of %s" % program, nested + 1, hops + 1)
    elif "env" in (os.path.basename(program), os.path.basename(resolved)):
        _check_env_command(chk, "%s %s" % (program, arg), arg, who, hops)


def _check_env_command(chk: ScriptCheck, env_line: str, arg: str | None, who: str,
                       hops: int) -> None:
    """What ENV_LINE (env and its ARG) runs, as env finds it on the trusted PATH."""
    command = _env_command(arg, who)
    found = command and _find_on_trusted_path(chk, command, env_line)
    if found:   # a new execve: the kernel's #! nesting count starts again
        _check_program(chk, found, None, env_line, 0, hops + 1)


def _plan_exec(chk: ScriptCheck, st: os.stat_result) -> None:
    """Decides how the script runs (argv_prefix) and checks what that runs."""
    assert chk.resolved is not None   # check_script resolved it first
    first_line = _read_head(chk.resolved, st).split(b"\n", 1)[0]
    if first_line.endswith(b"\r"):
        _cannot_run(chk, _crlf_hint(chk.path, first_line))
    shebang = None if chk.hint else _shebang(first_line)
    direct = st.st_mode & stat.S_IXUSR and (shebang or first_line.startswith(ELF_MAGIC))
    if not direct:
        chk.argv_prefix = (SH, chk.path)
        _check_program(chk, SH, None, chk.path, 0, 0)
        return
    chk.argv_prefix = (chk.path,)
    if shebang:
        _check_program(chk, *shebang, "the #! line of %s" % chk.path, 0, 0)


def _script_file_problem(path: str, st: os.stat_result) -> str | None:
    bad = []
    if st.st_uid != 0:
        bad.append("owned by %s, not root" % _owner(st.st_uid))
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        bad.append("mode %s has group/other bits (use 700; 500, 600, 400 accepted)" % _mode(st))
    if mode & (stat.S_ISUID | stat.S_ISGID):
        bad.append("setuid/setgid bit set (mode %s)" % _mode(st))
    return "%s: %s" % (path, ", ".join(bad)) if bad else None


def _tag(role: str) -> str:
    return {"pre": "Pre", "post": "Post"}.get(role, "Pre")


def _not_found(path: str, role: str) -> str | None:
    if not path:
        return "%sScriptLocation is empty" % role
    if not path.startswith("/"):
        return ("%s: not a full path; the script location must be a full path starting with / "
                "(vmsnap does not expand ~ or look in any directory)" % path)
    return None


def _holder_problem(resolved: str, what: str) -> str | None:
    """Why the directory holding RESOLVED (already walked) may not hold what
    runs: interpreters read files beside it (python's sys.path[0], its
    pyvenv.cfg, a script's `. "$(dirname "$0")/lib.sh"`), and in a sticky
    directory anyone can add one."""
    holder = os.path.dirname(resolved) or "/"
    _, st = resolve_checked(holder)
    why = _unsafe_dir(st, sticky_ok=False)
    if why:
        return ("directory %s holding %s is %s: anyone could put a file beside it that it "
                "reads (a module, a library); move it to a directory only root can write"
                % (holder, what, why))
    return None


def check_script(path: str, role: str) -> ScriptCheck:
    """Checks a configured script; ``problem`` says why it must not run."""
    tag = _tag(role)
    chk = ScriptCheck(path=path, role=role)
    missing = _not_found(path, role)
    if missing:
        chk.problem = Problem("%s-ScriptNotFound" % tag, missing)
        return chk
    try:
        resolved, st = resolve_checked(path)
        if not stat.S_ISREG(st.st_mode):
            raise FileNotFoundError(2, "not a regular file")
        bad = _script_file_problem(path, st) or _holder_problem(resolved, path)
        if bad:
            raise Unsafe(bad)
        chk.resolved = resolved
        _plan_exec(chk, st)
    except Unsafe as exc:
        chk.problem = Problem("InsufficientPermissionfor%s-Script" % tag, str(exc))
    except OSError as exc:
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%s: %s" % (path, exc.strerror))
    if chk.problem:
        chk.resolved, chk.argv_prefix, chk.hint, chk.check_problems = None, (), None, []
    return chk


def check_hook(path: str, role: str) -> ScriptCheck:
    """check_script for a hook, whose directory must be writable by root
    alone: what it holds decides what runs, and in a sticky directory anyone
    can add an entry (a root-owned file moved out of their own directory)."""
    directory = os.path.dirname(path)
    try:
        _, st = resolve_checked(directory)
        why = _unsafe_dir(st, sticky_ok=False) if stat.S_ISDIR(st.st_mode) else None
    except (Unsafe, OSError):
        why = None   # check_script names the path's problem
    if why is None:
        return check_script(path, role)
    chk = ScriptCheck(path=path, role=role)
    chk.problem = Problem("InsufficientPermissionfor%s-Script" % _tag(role),
                          "hooks directory %s is %s: anyone could add a hook (chmod 755)"
                          % (directory, why))
    return chk
