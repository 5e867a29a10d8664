"""vmsnap: application-consistent snapshots for Linux machines.

Public API (SPEC §7):

- ``run(config=None, snapshot=None, mounts=None, freeze_timeout=None) -> Result``
- ``freeze_filesystems(mountpoints, timeout, presync=True) -> FreezeSession``
- ``run_process(argv, timeout, ...) -> ProcessResult``
- ``thaw_recorded() -> list``: thaw what a crashed run left frozen
"""

from ._version import __version__
from .config import Config
from .cycle import run
from .errors import BusyError, ConfigError, CoreUnavailable, FreezeError, VmsnapError
from .freeze import FreezeSession, MountResult, freeze_filesystems, thaw_recorded
from .process import ProcessResult, run_process
from .result import Result

__all__ = [
    "__version__", "BusyError", "ConfigError", "CoreUnavailable", "FreezeError", "VmsnapError",
    "FreezeSession", "MountResult", "freeze_filesystems", "thaw_recorded",
    "ProcessResult", "run_process", "run", "Result", "Config",
]
