"""Files vmsnap writes as root outside its runtime directory: the log and
the metrics textfile (SPEC §4).

Such a directory may belong to someone else (node_exporter's textfile
directory often belongs to its service user), who can then put anything at
any name in it at any moment: a symlink to a root-only file, a FIFO, a
symlink to ``/dev/zero``.  Whoever owns the directory can make a write
fail, never redirect it, nor make root change the mode of, read, or hang on
another file.  So, here and only here:

- the directory is opened once (``O_DIRECTORY|O_NOFOLLOW``) and every name
  is then opened, created and renamed relative to that fd;
- a file is opened with ``O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC`` (a symlink
  fails, a FIFO opens without waiting for a writer) and used only when
  ``fstat`` of that fd says it is a regular file;
- reads are bounded;
- a mode is set with ``fchmod`` on the open fd, never by path;
- a replacement is written to a temp file of an unpredictable name created
  with ``O_EXCL`` in the directory fd, then ``renameat``'d within it: a
  crash leaves a temp file that no later run collides with.
"""

from __future__ import annotations

import errno
import os
import stat

OPEN_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_READ_BYTES = 1024 * 1024


def _kind(st: os.stat_result) -> str:
    """What a non-regular file is, in words."""
    mode = st.st_mode
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _refuse(path: str, what: str, code: int = errno.EPERM) -> OSError:
    return OSError(code, what, path)


def open_directory(path: str) -> int:
    """An fd of the directory PATH, its last component not followed (a
    symlink there is refused: it could be re-pointed between two uses)."""
    path = os.path.normpath(path)   # no trailing slash: it would follow a symlink
    try:
        return os.open(path, DIR_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise _refuse(path, "no such directory", errno.ENOENT) from None
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.lstat(path)
            except OSError:
                raise exc from None
            raise _refuse(path, "is %s, not a directory (give the real directory's path)"
                          % _kind(st), errno.ENOTDIR) from None
        raise


def open_regular(name: str, flags: int, *, dir_fd: int | None = None,
                 mode: int = 0o600) -> tuple[int, os.stat_result]:
    """(fd, stat) of NAME opened with FLAGS plus O_NOFOLLOW|O_NONBLOCK|O_CLOEXEC,
    if it is a regular file; OSError naming what it is otherwise (never
    blocks: a FIFO opens at once, and is then refused)."""
    where = name
    try:
        fd = os.open(name, flags | OPEN_FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse(where, "is a symbolic link (not followed)", errno.ELOOP) from None
        if exc.errno == errno.ENXIO:   # a FIFO opened for writing with no reader
            raise _refuse(where, "is a FIFO, not a regular file", errno.ENXIO) from None
        raise
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(where, "is %s, not a regular file" % _kind(st))
    return fd, st


def check_own(fd: int, st: os.stat_result, name: str) -> None:
    """Refuses (and closes FD) unless it is a plain file of this user's: a
    user may have put a hard link to another file, or a file of their own,
    at the name (protected_hardlinks is not relied on)."""
    if st.st_uid != os.geteuid():
        os.close(fd)
        raise _refuse(name, "belongs to uid %d, not to uid %d" % (st.st_uid, os.geteuid()))
    if st.st_nlink != 1:
        os.close(fd)
        raise _refuse(name, "has %d hard links (one may be another file's name)"
                      % st.st_nlink)


def read_own(dir_fd: int, name: str, limit: int = MAX_READ_BYTES) -> bytes | None:
    """The contents of NAME in DIR_FD (at most LIMIT bytes), or None when
    there is no such file.  OSError when it is not a plain file of ours, or
    larger than LIMIT (bounded: never reads a /dev/zero, nor all of a huge
    file)."""
    try:
        fd, st = open_regular(name, os.O_RDONLY, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    check_own(fd, st, name)
    try:
        chunks, size = [], 0
        while size <= limit:
            b = os.read(fd, min(65536, limit + 1 - size))
            if not b:
                break
            chunks.append(b)
            size += len(b)
    finally:
        os.close(fd)
    if size > limit:
        raise _refuse(name, "is larger than %d bytes" % limit, errno.EFBIG)
    return b"".join(chunks)


def temp_name(name: str) -> str:
    """A hidden, unpredictable name next to NAME (never NAME's suffix, so a
    collector that reads *.prom skips it)."""
    return ".%s.%s.tmp" % (name, os.urandom(8).hex())


def replace(dir_fd: int, name: str, data: bytes, mode: int = 0o644) -> None:
    """NAME in DIR_FD replaced whole by DATA with MODE: written to a new temp
    file (O_EXCL, unpredictable name), fchmod'ed, fsync'ed, then renamed over
    NAME inside DIR_FD.  Readers see the old file or the new one, never a
    mix; whatever someone does to the temp name meanwhile, root touches no
    other file."""
    tmp = temp_name(name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)   # on the fd: a name can be swapped, an fd cannot
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise
    try:
        os.fsync(dir_fd)   # the rename itself survives a crash
    except OSError:
        pass


def open_append_own(path: str, mode: int = 0o600) -> int:
    """PATH opened for appending if it is (or is created as) a plain file of
    this user's, for the log: in a directory others can write (a sticky /tmp,
    say) a user may plant a symlink, a FIFO, a hard link or a file of their
    own at that name, and root must not write through it.  A file created
    here gets exactly MODE (fchmod: the umask does not decide)."""
    flags = os.O_WRONLY | os.O_APPEND
    try:
        fd, st = open_regular(path, flags | os.O_CREAT | os.O_EXCL, mode=mode)
        created = True
    except FileExistsError:
        fd, st = open_regular(path, flags)
        created = False
    check_own(fd, st, path)
    if created:
        try:
            os.fchmod(fd, mode)
        except OSError:
            os.close(fd)
            raise
    return fd
