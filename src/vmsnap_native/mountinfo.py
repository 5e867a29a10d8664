"""Mount discovery: parse /proc/self/mountinfo and choose what to freeze.

Each mount is either eligible (local, writable, block-backed, of a type that
supports FIFREEZE) or skipped with a reason that ``vmsnap mounts`` shows.
One superblock is frozen once, however many times it is mounted, and the
eligible ones get a freeze *level*: level 0 is frozen first (children:
nested mounts, loop filesystems whose image lives on another eligible
filesystem), and thawed last.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Callable, Collection, Iterable, Iterator

from ._record import Frozen, Record

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

# Filesystem types that implement freeze (sb->s_op->freeze_fs/freeze_super).
FREEZABLE_FSTYPES = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "jfs", "reiserfs", "nilfs2",
    "gfs2", "ocfs2", "bcachefs", "ext4dev",
})
# Kernel-internal and memory-backed filesystems: nothing on a disk to protect.
PSEUDO_FSTYPES = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2",
    "securityfs", "debugfs", "tracefs", "pstore", "bpf", "mqueue", "hugetlbfs",
    "configfs", "fusectl", "autofs", "binfmt_misc", "efivarfs", "rpc_pipefs", "nsfs",
    "selinuxfs", "overlay", "aufs", "squashfs", "iso9660", "udf", "zram", "nfsd",
})
# Network and user-space filesystems: freezing them is the server's business.
NETWORK_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs",
    "lustre", "gpfs", "virtiofs", "fuse", "fuseblk", "sshfs",
})

LOOP_MAJOR = 7
_OCTAL = re.compile(rb"\\([0-7]{3})")


class Mount(Frozen):
    """One line of /proc/self/mountinfo."""

    __slots__ = ("mount_id", "parent_id", "major", "minor", "root", "mountpoint", "options",
                 "optional", "fstype", "source", "super_options")
    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    mountpoint: str
    options: tuple[str, ...]
    optional: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]

    def __init__(self, mount_id: int, parent_id: int, major: int, minor: int, root: str,
                 mountpoint: str, options: tuple[str, ...], optional: tuple[str, ...],
                 fstype: str, source: str, super_options: tuple[str, ...]) -> None:
        f = object.__setattr__
        f(self, "mount_id", mount_id)
        f(self, "parent_id", parent_id)
        f(self, "major", major)
        f(self, "minor", minor)
        f(self, "root", root)
        f(self, "mountpoint", mountpoint)
        f(self, "options", options)
        f(self, "optional", optional)
        f(self, "fstype", fstype)
        f(self, "source", source)
        f(self, "super_options", super_options)

    @property
    def device(self) -> str:
        return "%d:%d" % (self.major, self.minor)

    @property
    def read_only(self) -> bool:
        return "ro" in self.options or "ro" in self.super_options


class Candidate(Record):
    """A mount and what vmsnap would do with it."""

    __slots__ = ("mount", "eligible", "reason", "level")
    mount: Mount
    eligible: bool
    reason: str | None
    level: int

    def __init__(self, mount: Mount, eligible: bool, reason: str | None = None,
                 level: int = 0) -> None:
        self.mount = mount
        self.eligible = eligible
        self.reason = reason
        self.level = level

    def to_dict(self) -> dict[str, Any]:
        return {
            "mountpoint": self.mount.mountpoint,
            "fstype": self.mount.fstype,
            "device": self.mount.device,
            "source": self.mount.source,
            "eligible": self.eligible,
            "reason": self.reason,
            "level": self.level if self.eligible else None,
        }


class Selection(Record):
    __slots__ = ("eligible", "skipped", "missing")
    eligible: list[Candidate]   # freeze order
    skipped: list[Candidate]    # with reasons
    missing: list[str]          # requested paths that are no mount point

    def __init__(self, eligible: list[Candidate] | None = None,
                 skipped: list[Candidate] | None = None,
                 missing: list[str] | None = None) -> None:
        self.eligible = [] if eligible is None else eligible
        self.skipped = [] if skipped is None else skipped
        self.missing = [] if missing is None else missing

    def to_dict(self) -> dict[str, Any]:
        return {
            "eligible": [c.to_dict() for c in self.eligible],
            "skipped": [c.to_dict() for c in self.skipped],
            "missing": list(self.missing),
        }


def unescape(field_text: str) -> str:
    """Undoes the kernel's octal escapes (\\040 space, \\011 tab, \\012 newline, \\134 backslash)."""
    if "\\" not in field_text:
        return field_text
    raw = field_text.encode("utf-8", "surrogateescape")
    raw = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), raw)
    return raw.decode("utf-8", "surrogateescape")


def parse_line(line: str) -> Mount:
    """Parses one mountinfo line; raises ValueError naming what is wrong."""
    parts = line.split()
    try:
        sep = parts.index("-", 6)
    except ValueError:
        raise ValueError("mountinfo line has no ' - ' separator: %r" % line) from None
    if len(parts) < sep + 3:
        raise ValueError("mountinfo line is missing fields after ' - ': %r" % line)
    major, _, minor = parts[2].partition(":")
    return Mount(
        mount_id=int(parts[0]),
        parent_id=int(parts[1]),
        major=int(major),
        minor=int(minor),
        root=unescape(parts[3]),
        mountpoint=unescape(parts[4]),
        options=tuple(parts[5].split(",")),
        optional=tuple(parts[6:sep]),
        fstype=parts[sep + 1],
        source=unescape(parts[sep + 2]),
        super_options=tuple(parts[sep + 3].split(",")) if len(parts) > sep + 3 else (),
    )


def parse_mountinfo(text: str) -> list[Mount]:
    return [parse_line(line) for line in text.splitlines() if line.strip()]


def read_mountinfo(path: str = "/proc/self/mountinfo", ids: Collection[int] | None = None) -> list[Mount]:
    """The mounts of the table; with IDS, only the mounts of those ids (the
    other lines are not parsed: a question about a few fds stays cheap on a
    table of thousands)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        text = f.read()
    if ids is None:
        return parse_mountinfo(text)
    want = {str(i) for i in ids}
    return [parse_line(line) for line in text.splitlines() if line.split(" ", 1)[0] in want]


def _block_backed(m: Mount) -> bool:
    if m.major != 0:
        return True
    # btrfs (and a few others) report an anonymous 0:N device; their source is the disk
    return m.source.startswith("/dev/") and os.path.exists(m.source)


def _loop_backing_file(m: Mount, sysfs: str = "/sys") -> str | None:
    if m.major != LOOP_MAJOR:
        return None
    try:
        with open("%s/dev/block/%s/loop/backing_file" % (sysfs, m.device), encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _skip_reason(m: Mount) -> str | None:
    fstype = m.fstype
    base = fstype.split(".", 1)[0]
    if fstype in PSEUDO_FSTYPES:
        return "pseudo filesystem (%s): nothing on disk" % fstype
    if fstype in NETWORK_FSTYPES or base in NETWORK_FSTYPES:
        return "network or FUSE filesystem (%s): not ours to freeze" % fstype
    if m.read_only:
        return "read-only mount: nothing can change"
    if not _block_backed(m):
        return "no block device behind it (%s)" % m.device
    if fstype not in FREEZABLE_FSTYPES:
        return "filesystem type %s does not support freezing" % fstype
    return None


def _matches(mountpoint: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(mountpoint, p) or mountpoint == p.rstrip("/") or
               (p == "/" and mountpoint == "/") for p in patterns)


def _matcher(patterns: Iterable[str]) -> Callable[[str], bool]:
    """``_matches`` against PATTERNS, in one set lookup for the plain paths
    among them (a glob is tried on every mount; a plain path need not be:
    128 --mount paths on a table of 10,000 would be 1.3 million tries)."""
    exact: set[str] = set()
    globs: list[str] = []
    for p in patterns:
        if any(c in p for c in "*?["):
            globs.append(p)
        else:   # what fnmatchcase of a plain path matches: the path itself
            exact.update((p, p.rstrip("/")))   # "/" itself stays in as p
    return lambda mountpoint: mountpoint in exact or _matches(mountpoint, globs)


def _normalize(path: str) -> str:
    path = os.path.normpath(path)
    return path if path != "//" else "/"


def select(mounts: list[Mount], only: Iterable[str] | None = None,
           skip: Iterable[str] | None = (), sysfs: str = "/sys",
           unselected: str | None = None) -> Selection:
    """Chooses what to freeze.

    only: mount points (globs allowed) to restrict to (``--mount``,
    ``mountsToFreeze``); None selects every eligible filesystem, an empty
    list selects none; skip: mount points (globs) never frozen
    (``mountsToSkip``); unselected: the reason shown for a mount that ONLY
    leaves out (default: it names --mount / mountsToFreeze).
    """
    if only is not None:
        only = [_normalize(p) if not any(c in p for c in "*?[") else p for p in only]
    skip = list(skip or ())
    sel = Selection()
    # A mount point mounted over again is hidden: only the last one is reachable.
    shown = {id(m) for m in visible(mounts)}
    paths = {m.mountpoint for m in mounts}
    # skipping a mount point skips its filesystem wherever else it is mounted
    selected, skipped = _matcher(only or ()), _matcher(skip)
    skipped_sb = {m.device: m.mountpoint for m in mounts if skip and skipped(m.mountpoint)}
    first_of_sb: dict[str, Mount] = {}
    chosen = []
    for m in mounts:
        reason = None
        if id(m) not in shown:
            reason = "hidden under a later mount at the same path"
        else:
            reason = _skip_reason(m)
        if reason is not None:
            pass
        elif only is not None and not selected(m.mountpoint):
            reason = unselected or ("not selected (--mount / mountsToFreeze)" if only
                                    else "not selected: mountsToFreeze is an empty list")
        elif skip and skipped(m.mountpoint):
            reason = "skipped by mountsToSkip"
        elif m.device in skipped_sb:
            reason = "same filesystem as %s, skipped by mountsToSkip" % skipped_sb[m.device]
        if reason is None:
            key = m.device
            if key in first_of_sb:
                reason = "same filesystem as %s (frozen once)" % first_of_sb[key].mountpoint
            else:
                first_of_sb[key] = m
        if reason:
            sel.skipped.append(Candidate(m, False, reason))
        else:
            chosen.append(Candidate(m, True))
    if only is not None:
        for p in only:
            if not any(c in p for c in "*?[") and p not in paths:
                sel.missing.append(p)
    assign_levels(chosen, sysfs=sysfs)
    # freeze order: level 0 first; within a level, deepest mount point first
    chosen.sort(key=lambda c: (c.level, -c.mount.mountpoint.count("/"), c.mount.mountpoint))
    sel.eligible = chosen
    return sel


def assign_levels(cands: list[Candidate], sysfs: str = "/sys") -> None:
    """Level 0 for filesystems nothing else depends on; a parent gets one more
    than its deepest child.  A child is a mount below the parent's mount
    point, or a loop filesystem whose image file lives on the parent.

    Linear in the candidates (times the depth of their paths): each finds
    its parents by walking up its mount point, and its image's path, in a
    dictionary of mount points; the levels are then one pass in topological
    order.  Only the nearest candidate above a mount point is linked: the
    ones further up are above that one too, so the levels are the same."""
    at = _index([c.mount for c in cands])
    owner: dict[int, Candidate] = {}
    for c in cands:
        owner.setdefault(id(c.mount), c)
    parents: dict[int, list[Candidate]] = {}
    for c in cands:
        ps = parents.setdefault(id(c), [])
        for top in _above(c.mount.mountpoint, itself=False):
            if top in at:
                ps.append(owner[id(at[top])])
                break
        backing = _loop_backing_file(c.mount, sysfs)
        if backing:
            m = _lookup(at, backing)
            p = owner[id(m)] if m is not None else None
            if p is not None and p is not c and all(p is not q for q in ps):
                ps.append(p)
    # children first: a candidate is done once every child has passed on its level
    children_left = {id(c): 0 for c in cands}
    for c in cands:
        c.level = 0
        for p in parents[id(c)]:
            children_left[id(p)] += 1
    ready = [c for c in cands if children_left[id(c)] == 0]
    while ready:
        c = ready.pop()
        for p in parents[id(c)]:
            if p.level < c.level + 1:
                p.level = c.level + 1
            children_left[id(p)] -= 1
            if children_left[id(p)] == 0:
                ready.append(p)
    # a cycle (image paths that name each other, through mounts made over them) leaves
    # its members with the levels their other children gave them


def _above(path: str, itself: bool = True) -> Iterator[str]:
    """The mount points that would hold PATH, deepest first: PATH itself
    (unless not ITSELF), each prefix of it that ends before a '/', then '/'."""
    if itself:
        yield path
    if path == "/":
        return
    i = len(path)
    while True:
        i = path.rfind("/", 0, i)
        if i <= 0:
            break
        yield path[:i]
    yield "/"


def _index(mounts: Iterable[Mount]) -> dict[str, Mount]:
    """Mount point -> the first of MOUNTS there (the one ``holder`` picks)."""
    at: dict[str, Mount] = {}
    for m in mounts:
        at.setdefault(m.mountpoint, m)
    return at


def _lookup(at: dict[str, Mount], path: str) -> Mount | None:
    for top in _above(path):
        m = at.get(top)
        if m is not None:
            return m
    return None


def holder(mounts: Iterable[Mount], path: str) -> Mount | None:
    """The deepest of MOUNTS at or above PATH (None if none is)."""
    return _lookup(_index(mounts), path)


def visible(mounts: list[Mount]) -> list[Mount]:
    """MOUNTS without those hidden under a later mount at the same path."""
    last = {m.mountpoint: m for m in mounts}
    return [m for m in mounts if last[m.mountpoint] is m]


def discover(only: Iterable[str] | None = None, skip: Iterable[str] | None = (),
             mountinfo_path: str = "/proc/self/mountinfo",
             unselected: str | None = None) -> Selection:
    return select(read_mountinfo(mountinfo_path), only=only, skip=skip, unselected=unselected)
