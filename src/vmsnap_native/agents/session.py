"""A session's file and socket, as both sides use them: the session holder
(holder.py) publishes them, each call of the agent (calls.py) finds the
holder through them.  Light on purpose: a last call that only reaches the
holder imports this, not the cycle's machinery."""

from __future__ import annotations

import json
import os
import socket
import struct

from .._paths import runtime_dir

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

    from ..result import Result


def session_path(agent: str) -> str:
    return os.path.join(runtime_dir(), "hook-%s.json" % agent)


def expired_path(agent: str) -> str:
    """What a session that ended without its last call leaves for that call."""
    return os.path.join(runtime_dir(), "hook-%s.expired.json" % agent)


def write_atomically(path: str, data: dict[str, Any]) -> None:
    """Root-only 0600, written to a fresh temporary file and renamed: never half a file."""
    tmp = "%s.tmp-%s" % (path, os.urandom(6).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, json.dumps(data).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_trusted(path: str) -> dict[str, Any]:
    """A session file, if it is ours (owned by us, no group/other bits, a
    regular file): it names the process to signal and the socket to call."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not (st.st_mode & 0o170000 == 0o100000) or st.st_uid != os.geteuid() \
                or st.st_mode & 0o077:
            raise ValueError("%s is not vmsnap's (owner uid %d, mode %o): ignored"
                             % (path, st.st_uid, st.st_mode & 0o777))
        doc: dict[str, Any] = json.loads(os.read(fd, 1 << 20))   # vmsnap wrote it: an object
        return doc
    finally:
        os.close(fd)


def send(sock: socket.socket, msg: dict[str, Any]) -> bool:
    try:
        sock.sendall(json.dumps(msg).encode() + b"\n")
        return True
    except OSError:
        return False


def receive(sock: socket.socket, timeout: float | None) -> dict[str, Any] | None:
    """One newline-terminated JSON message, or None (EOF, timeout, garbage)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
            if len(data) > 1 << 22:
                return None
        msg: dict[str, Any] = json.loads(data)   # every message vmsnap sends is an object
        return msg
    except (OSError, ValueError):
        return None


def peer_is_root(conn: socket.socket) -> bool:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return bool(uid == 0)


def summary(agent: str, phase: str, res: Result) -> list[str]:
    head = "vmsnap hook %s %s: %s" % (agent, phase, res.status)
    if res.consistency:
        head += ", %s-consistent" % res.consistency
    lines = [head]
    lines += ["  warning: %s" % w for w in res.warnings]
    for e in res.errors:
        lines.append("  error %s (%d): %s" % (e.code, e.number, e.message))
        lines.append("        -> %s" % e.action)
    return lines
