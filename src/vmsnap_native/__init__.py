"""vmsnap: application-consistent snapshots for Linux machines.

Public API (SPEC §7):

- ``run(config=None, snapshot=None, mounts=None, freeze_timeout=None) -> Result``
- ``freeze_filesystems(mountpoints, timeout, presync=True) -> FreezeSession``
- ``run_process(argv, timeout, ...) -> ProcessResult``
- ``thaw_recorded() -> list``: thaw what a crashed run left frozen
"""

from ._version import __version__

TYPE_CHECKING = False   # true for type checkers (by its name); `typing` is not imported for it

if TYPE_CHECKING:   # the names as type checkers see them; at run time, imported on first use
    from .config import Config
    from .cycle import run
    from .errors import BusyError, ConfigError, CoreUnavailable, FreezeError, VmsnapError
    from .freeze import FreezeSession, MountResult, freeze_filesystems, thaw_recorded
    from .process import ProcessResult, run_process
    from .result import Result

# Where each public name lives.  They are imported on first use (PEP 562), so
# that `vmsnap hook`, `vmsnap mounts` and `--version`, which import this
# package first, pay only for what they use.
_PUBLIC = {
    "Config": "config", "run": "cycle", "Result": "result",
    "BusyError": "errors", "ConfigError": "errors", "CoreUnavailable": "errors",
    "FreezeError": "errors", "VmsnapError": "errors",
    "FreezeSession": "freeze", "MountResult": "freeze", "freeze_filesystems": "freeze",
    "thaw_recorded": "freeze", "ProcessResult": "process", "run_process": "process",
}

__all__ = [
    "__version__", "BusyError", "ConfigError", "CoreUnavailable", "FreezeError", "VmsnapError",
    "FreezeSession", "MountResult", "freeze_filesystems", "thaw_recorded",
    "ProcessResult", "run_process", "run", "Result", "Config",
]


def __getattr__(name: str) -> object:
    if name not in _PUBLIC:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    from importlib import import_module
    value = getattr(import_module("." + _PUBLIC[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
