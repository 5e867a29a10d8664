"""The error codes of SPEC §5 (one table), the one error shape, and the
package's exceptions.

Each code carries its Azure-compatible name, its number, a summary and the
action the user should take, together, so nothing can drift.  Code names
are written once, here: everything else uses the constants below (or
``SCRIPT_CODES[role]`` for the codes that differ only by script role).
An ``Error`` is what the user sees: one shape for the result, ``check``
and the log; whatever else describes a problem (a policy problem, an
exception) is converted to it once, by ``Error.of`` / ``VmsnapError.error``.
"""

from __future__ import annotations

from ._record import Frozen

TYPE_CHECKING = False   # true for type checkers; `typing` is not imported for it
if TYPE_CHECKING:
    from typing import Any

    from .config import AzureDifference


class ErrorCode(Frozen):
    __slots__ = ("code", "number", "summary", "action")
    code: str
    number: int
    summary: str
    action: str

    def __init__(self, code: str, number: int, summary: str, action: str) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "summary", summary)
        object.__setattr__(self, "action", action)

    def error(self, message: str) -> Error:
        """This code with MESSAGE: what happened, to what."""
        return Error(self.code, self.number, message, self.action)


class Error(Frozen):
    """One error as the user sees it (SPEC §7: code, number, message, action)."""

    __slots__ = ("code", "number", "message", "action")
    code: str
    number: int
    message: str
    action: str

    def __init__(self, code: str, number: int, message: str, action: str) -> None:
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "number", number)
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "action", action)

    @classmethod
    def of(cls, code: str, message: str) -> Error:
        """From a code name another module reports (policy.Problem): looked up, never retyped."""
        return CODES[code].error(message)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "number": self.number, "message": self.message,
                "action": self.action}


_PERMISSION_ACTION = ("chown root, chmod 700 the script (and keep its directories root-owned, "
                      "not group/other-writable)")

PRE_SCRIPT_FAILED = ErrorCode(
    "Pre-ScriptExecutionFailed", 300,
    "the pre-script exited non-zero or died, after all retries",
    "read the script's output in the log and fix the script")
POST_SCRIPT_FAILED = ErrorCode(
    "Post-ScriptExecutionFailed", 301,
    "the post-script exited non-zero or died, after all retries; "
    "the application may not have resumed",
    "fix the script, check the application's state")
PRE_SCRIPT_NOT_FOUND = ErrorCode(
    "Pre-ScriptNotFound", 302, "no file at preScriptLocation",
    "put the script at the configured path")
POST_SCRIPT_NOT_FOUND = ErrorCode(
    "Post-ScriptNotFound", 303, "no file at postScriptLocation",
    "put the script at the configured path")
CORE_UNAVAILABLE = ErrorCode(
    "IncorrectPluginhostFile", 304,
    "the native core that runs scripts and freezes cannot be loaded or fails its self-check",
    "reinstall the package (pip install --force-reinstall vmsnap-native)")
CONFIG_INVALID = ErrorCode(
    "IncorrectJSONConfigFile", 305,
    "the configuration file is unparsable, has wrong types, or misses required fields",
    "fix the file (the message says which field)")
PRE_SCRIPT_PERMISSION = ErrorCode(
    "InsufficientPermissionforPre-Script", 306,
    "the pre-script is not root-owned or has group/other permissions", _PERMISSION_ACTION)
POST_SCRIPT_PERMISSION = ErrorCode(
    "InsufficientPermissionforPost-Script", 307,
    "the post-script is not root-owned or has group/other permissions", _PERMISSION_ACTION)
PRE_SCRIPT_TIMEOUT = ErrorCode(
    "Pre-ScriptTimeout", 308,
    "every attempt of the pre-script exceeded timeoutInSeconds",
    "fix the script or raise timeoutInSeconds")
POST_SCRIPT_TIMEOUT = ErrorCode(
    "Post-ScriptTimeout", 309,
    "every attempt of the post-script exceeded timeoutInSeconds",
    "fix the script or raise timeoutInSeconds")
CONFIG_PERMISSION = ErrorCode(
    "InsufficientPermissionforJSONConfigFile", 317,
    "the configuration file is not root-owned or has group/other/execute permissions",
    "chown root, chmod 600 the configuration file")
FS_FREEZE_FAILED = ErrorCode(
    "FsFreezeFailed", 121, "a filesystem could not be frozen",
    "see the message (errno, mount point); exclude the mount with mountsToSkip if it "
    "cannot be frozen")
FS_FREEZE_TIMEOUT = ErrorCode(
    "FsFreezeTimeout", 122, "the freeze deadline was reached and the guardian thawed",
    "make the snapshot step faster or raise freezeTimeoutInSeconds")
UNABLE_TO_OPEN_MOUNT = ErrorCode(
    "UnableToOpenMount", 123, "a mount point could not be opened before the freeze",
    "check the mount")
FS_THAWED_EARLY = ErrorCode(
    "FsThawedEarly", 124,
    "filesystems were thawed before the snapshot step ended, not by the deadline "
    "(the cause is in the message)",
    "find who thawed (vmsnap thaw --force, a signal)")
SNAPSHOT_FAILED = ErrorCode(
    "SnapshotFailed", 400, "the snapshot step failed", "see its output")
# vmsnap's own, numbered after SnapshotFailed
ANOTHER_RUN = ErrorCode(
    "AnotherRunInProgress", 401,
    "another vmsnap run holds the machine, or an earlier `vmsnap freeze` still holds "
    "filesystems frozen",
    "wait for the other run to finish, or run `vmsnap thaw` to end a `vmsnap freeze`")
INTERRUPTED = ErrorCode(
    "Interrupted", 402, "vmsnap was asked to stop (SIGINT/SIGTERM/SIGHUP)", "run again")

_TABLE = [
    PRE_SCRIPT_FAILED, POST_SCRIPT_FAILED, PRE_SCRIPT_NOT_FOUND, POST_SCRIPT_NOT_FOUND,
    CORE_UNAVAILABLE, CONFIG_INVALID, PRE_SCRIPT_PERMISSION, POST_SCRIPT_PERMISSION,
    PRE_SCRIPT_TIMEOUT, POST_SCRIPT_TIMEOUT, CONFIG_PERMISSION, FS_FREEZE_FAILED,
    FS_FREEZE_TIMEOUT, UNABLE_TO_OPEN_MOUNT, FS_THAWED_EARLY, SNAPSHOT_FAILED, ANOTHER_RUN,
    INTERRUPTED,
]

CODES: dict[str, ErrorCode] = {e.code: e for e in _TABLE}


class ScriptCodes(Frozen):
    """The codes of one script role: the pre-script (and hooks' freeze), the post-script
    (and hooks' thaw)."""

    __slots__ = ("failed", "timeout", "not_found", "permission")
    failed: ErrorCode
    timeout: ErrorCode
    not_found: ErrorCode
    permission: ErrorCode

    def __init__(self, failed: ErrorCode, timeout: ErrorCode, not_found: ErrorCode,
                 permission: ErrorCode) -> None:
        object.__setattr__(self, "failed", failed)
        object.__setattr__(self, "timeout", timeout)
        object.__setattr__(self, "not_found", not_found)
        object.__setattr__(self, "permission", permission)


SCRIPT_CODES = {
    "pre": ScriptCodes(PRE_SCRIPT_FAILED, PRE_SCRIPT_TIMEOUT, PRE_SCRIPT_NOT_FOUND,
                       PRE_SCRIPT_PERMISSION),
    "post": ScriptCodes(POST_SCRIPT_FAILED, POST_SCRIPT_TIMEOUT, POST_SCRIPT_NOT_FOUND,
                        POST_SCRIPT_PERMISSION),
}


def error_code(code: str) -> ErrorCode:
    return CODES[code]


class VmsnapError(Exception):
    """Base of the package's exceptions; ``code`` is the ErrorCode it reports as."""

    code: ErrorCode = FS_FREEZE_FAILED

    def error(self) -> Error:
        return self.code.error(str(self))


class CoreUnavailable(VmsnapError):
    """The native core is missing, broken or of another version (IncorrectPluginhostFile)."""

    code = CORE_UNAVAILABLE


class ConfigError(VmsnapError):
    """The configuration file is invalid (IncorrectJSONConfigFile); the message names the field."""

    code = CONFIG_INVALID
    # set by parse_config when the file was read: what it warned about, how Azure differs
    warnings: list[str]
    azure_differences: list[AzureDifference]


class FreezeError(VmsnapError):
    """A freeze session could not be set up or run."""

    code = FS_FREEZE_FAILED


class BusyError(VmsnapError):
    """Another vmsnap run or freeze holds the machine."""

    code = ANOTHER_RUN
