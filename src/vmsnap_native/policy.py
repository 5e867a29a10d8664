"""Permission policy (SPEC §2): what vmsnap agrees to run as root.

The configuration file and each script must be root-owned with no
group/other bits; every directory on a script's path, as the path resolves
(symlinks followed, each link's directory checked too), must be root-owned
and not writable by group or others (sticky directories like /tmp are fine:
nobody else can rename a root-owned entry in them).  Then nobody but root
can change what runs between the check and the exec.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

MAX_SYMLINKS = 40


@dataclass
class Problem:
    code: str
    message: str


@dataclass
class ScriptCheck:
    path: str
    role: str                 # "pre" or "post" (or "hook")
    problem: Problem | None = None
    argv_prefix: tuple = ()   # what to exec: (path,) or ("/bin/sh", path)
    resolved: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def _mode(st) -> str:
    return "%o" % stat.S_IMODE(st.st_mode)


def check_config_stat(st, path: str) -> Problem | None:
    bad = []
    if st.st_uid != 0:
        bad.append("owned by uid %d, not root" % st.st_uid)
    if stat.S_IMODE(st.st_mode) & 0o177:
        bad.append("mode %s (must be 600 or 400: no group/other bits, no execute bit)" % _mode(st))
    if bad:
        return Problem("InsufficientPermissionforJSONConfigFile", "%s: %s" % (path, ", ".join(bad)))
    return None


def _unsafe_dir(st) -> str | None:
    if st.st_uid != 0:
        return "owned by uid %d, not root" % st.st_uid
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 and not mode & stat.S_ISVTX:
        return "writable by group or others (mode %s)" % _mode(st)
    return None


def resolve_checked(path: str):
    """Follows PATH component by component from /.  Returns (resolved, None)
    or (None, reason) naming the first unsafe directory."""
    if not path.startswith("/"):
        return None, "%s: not a full path" % path
    pending = [c for c in path.split("/") if c]
    current = "/"
    links = 0
    st = os.lstat("/")
    why = _unsafe_dir(st)
    if why:
        return None, "/: %s" % why
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            current = os.path.dirname(current.rstrip("/")) or "/"
            continue
        nxt = os.path.join(current, name)
        st = os.lstat(nxt)  # FileNotFoundError propagates: the caller says "not found"
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_SYMLINKS:
                return None, "%s: too many levels of symbolic links" % path
            target = os.readlink(nxt)
            # the link lives in `current`, already checked; its target is checked as it resolves
            if target.startswith("/"):
                current = "/"
            pending = [c for c in target.split("/") if c] + pending
            continue
        if pending:
            if not stat.S_ISDIR(st.st_mode):
                return None, "%s: not a directory" % nxt
            why = _unsafe_dir(st)
            if why:
                return None, "directory %s on the script's path is %s" % (nxt, why)
        current = nxt
    return current, None


def check_script(path: str, role: str) -> ScriptCheck:
    """Checks a configured script; ``problem`` says why it must not run."""
    tag = {"pre": "Pre", "post": "Post"}.get(role, "Pre")
    chk = ScriptCheck(path=path, role=role)
    if not path:
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%sScriptLocation is empty" % role)
        return chk
    try:
        resolved, why = resolve_checked(path)
    except FileNotFoundError:
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%s: no such file" % path)
        return chk
    except NotADirectoryError:
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%s: a path component is not a directory" % path)
        return chk
    except OSError as exc:
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%s: %s" % (path, exc.strerror))
        return chk
    perm_code = "InsufficientPermissionfor%s-Script" % tag
    if why:
        chk.problem = Problem(perm_code, why)
        return chk
    st = os.stat(resolved)
    if not stat.S_ISREG(st.st_mode):
        chk.problem = Problem("%s-ScriptNotFound" % tag, "%s: not a regular file" % path)
        return chk
    bad = []
    if st.st_uid != 0:
        bad.append("owned by uid %d, not root" % st.st_uid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        bad.append("mode %s has group/other bits (use 700; 500, 600, 400 accepted)" % _mode(st))
    if mode & (stat.S_ISUID | stat.S_ISGID):
        bad.append("setuid/setgid bit set (mode %s)" % _mode(st))
    if bad:
        chk.problem = Problem(perm_code, "%s: %s" % (path, ", ".join(bad)))
        return chk
    chk.resolved = resolved
    # executable: run directly (the #! line is honoured); otherwise through sh, as Azure does
    chk.argv_prefix = (path,) if mode & stat.S_IXUSR else ("/bin/sh", path)
    return chk
