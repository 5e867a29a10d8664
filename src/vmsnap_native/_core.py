"""Loads the compiled core and checks that it is the one this package expects.

Everything else imports ``ffi`` and ``lib`` from here; a missing, broken or
mismatched core raises ``CoreUnavailable`` (``IncorrectPluginhostFile`` in
the framework), never a bare ImportError from deep inside.
"""

from __future__ import annotations

import os

from ._version import __version__
from .errors import CoreUnavailable

# The ABI this Python code was written for (VMSNAP_ABI_VERSION in csrc/vmsnap.h).
EXPECTED_ABI = 13

# Switches off newer kernel/libc paths (comma-separated names) to exercise
# the fallbacks an old machine gets: pidfd, close_range, syncfs, cgroup (no
# usable cgroup v2: subreaper containment), cgroup_kill (before 5.14).
COMPAT_ENV = "VMSNAP_COMPAT_DISABLE"
COMPAT_FLAGS = {"pidfd": 1, "close_range": 2, "syncfs": 4, "cgroup": 16, "cgroup_kill": 32}

# The compiled core as typed code sees it: (ffi, lib).  cffi builds both at
# build time from csrc/vmsnap.h, with no type information; they cross into
# typed code here, as Any, and only here.  Values read from them are given
# their types where they are used (the functions that wrap each call).
TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any, Tuple
    Core = Tuple[Any, Any]
    # a pointer to, or a struct of, the core's (a cffi cdata object)
    CData = Any
else:   # imported by name elsewhere (annotations only)
    Core = tuple
    CData = object


def compat_flags(text: str) -> int:
    flags = 0
    for name in filter(None, (t.strip() for t in text.split(","))):
        if name == "all":
            flags |= sum(COMPAT_FLAGS.values())
        elif name in COMPAT_FLAGS:
            flags |= COMPAT_FLAGS[name]
        else:
            raise CoreUnavailable("%s: unknown path %r (known: %s, all)"
                                  % (COMPAT_ENV, name, ", ".join(COMPAT_FLAGS)))
    return flags


def _load() -> Core:
    try:
        from ._vmsnap_core import ffi, lib  # type: ignore[import-not-found]  # cffi: no stubs
    except ImportError as exc:
        raise CoreUnavailable("native core vmsnap_native._vmsnap_core cannot be loaded: %s" % exc) from exc
    abi = lib.vmsnap_core_abi()
    version = ffi.string(lib.vmsnap_core_version()).decode()
    if abi != EXPECTED_ABI or version != __version__:
        raise CoreUnavailable(
            "native core mismatch: core is version %s (ABI %d), package is %s (ABI %d)"
            % (version, abi, __version__, EXPECTED_ABI)
        )
    if os.environ.get(COMPAT_ENV):
        lib.vmsnap_compat_disable(compat_flags(os.environ[COMPAT_ENV]))
    return ffi, lib


_loaded: Core | None = None


def core() -> Core:
    """Returns (ffi, lib), loading and checking the core on first use."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


def check_errno(ret: int, what: str = "", path: str | None = None) -> int:
    """Turns the core's -errno convention into OSError."""
    if ret < 0:
        err = -ret
        if path is not None:
            raise OSError(err, "%s: %s" % (what, os.strerror(err)) if what else os.strerror(err), path)
        raise OSError(err, "%s: %s" % (what, os.strerror(err)) if what else os.strerror(err))
    return ret
