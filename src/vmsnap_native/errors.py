"""The error codes of SPEC §5 (one table) and the package's exceptions.

Each code carries its Azure-compatible name, its number, a message template
and the action the user should take, together, so nothing can drift.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: str
    number: int
    summary: str
    action: str


_TABLE = [
    ErrorCode("Pre-ScriptExecutionFailed", 300,
              "the pre-script exited non-zero or died, after all retries",
              "read the script's output in the log and fix the script"),
    ErrorCode("Post-ScriptExecutionFailed", 301,
              "the post-script exited non-zero or died, after all retries; "
              "the application may not have resumed",
              "fix the script, check the application's state"),
    ErrorCode("Pre-ScriptNotFound", 302,
              "no file at preScriptLocation",
              "put the script at the configured path"),
    ErrorCode("Post-ScriptNotFound", 303,
              "no file at postScriptLocation",
              "put the script at the configured path"),
    ErrorCode("IncorrectPluginhostFile", 304,
              "the native core that runs scripts and freezes cannot be loaded or fails its self-check",
              "reinstall the package (pip install --force-reinstall vmsnap-native)"),
    ErrorCode("IncorrectJSONConfigFile", 305,
              "the configuration file is unparsable, has wrong types, or misses required fields",
              "fix the file (the message says which field)"),
    ErrorCode("InsufficientPermissionforPre-Script", 306,
              "the pre-script is not root-owned or has group/other permissions",
              "chown root, chmod 700 the script (and keep its directories root-owned, not group/other-writable)"),
    ErrorCode("InsufficientPermissionforPost-Script", 307,
              "the post-script is not root-owned or has group/other permissions",
              "chown root, chmod 700 the script (and keep its directories root-owned, not group/other-writable)"),
    ErrorCode("Pre-ScriptTimeout", 308,
              "every attempt of the pre-script exceeded timeoutInSeconds",
              "fix the script or raise timeoutInSeconds"),
    ErrorCode("Post-ScriptTimeout", 309,
              "every attempt of the post-script exceeded timeoutInSeconds",
              "fix the script or raise timeoutInSeconds"),
    ErrorCode("InsufficientPermissionforJSONConfigFile", 317,
              "the configuration file is not root-owned or has group/other/execute permissions",
              "chown root, chmod 600 the configuration file"),
    ErrorCode("FsFreezeFailed", 121,
              "a filesystem could not be frozen",
              "see the message (errno, mount point); exclude the mount with mountsToSkip if it cannot be frozen"),
    ErrorCode("FsFreezeTimeout", 122,
              "the freeze deadline was reached and the guardian thawed",
              "make the snapshot step faster or raise freezeTimeoutInSeconds"),
    ErrorCode("UnableToOpenMount", 123,
              "a mount point could not be opened before the freeze",
              "check the mount"),
    ErrorCode("SnapshotFailed", 400,
              "the snapshot step failed",
              "see its output"),
    # vmsnap's own, numbered after SnapshotFailed
    ErrorCode("AnotherRunInProgress", 401,
              "another vmsnap run holds the machine, or an earlier `vmsnap freeze` still holds filesystems frozen",
              "wait for the other run to finish, or run `vmsnap thaw` to end a `vmsnap freeze`"),
]

CODES: dict[str, ErrorCode] = {e.code: e for e in _TABLE}


def error_code(code: str) -> ErrorCode:
    return CODES[code]


class VmsnapError(Exception):
    """Base of the package's exceptions."""


class CoreUnavailable(VmsnapError):
    """The native core is missing, broken or of another version (IncorrectPluginhostFile)."""

    code = "IncorrectPluginhostFile"


class ConfigError(VmsnapError):
    """The configuration file is invalid (IncorrectJSONConfigFile); the message names the field."""

    code = "IncorrectJSONConfigFile"


class FreezeError(VmsnapError):
    """A freeze session could not be set up or run."""


class BusyError(VmsnapError):
    """Another vmsnap run or freeze holds the machine."""
