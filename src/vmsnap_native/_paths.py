"""Where vmsnap keeps its state and its log by default: constants the thin
commands (`vmsnap hook`'s last call, the CLI's help) need without importing
the freeze or the log's machinery."""

from __future__ import annotations

import os

RUNTIME_DIR_ENV = "VMSNAP_RUNTIME_DIR"
DEFAULT_RUNTIME_DIR = "/run/vmsnap"
DEFAULT_LOG_FILE = "/var/log/vmsnap.log"


def runtime_dir() -> str:
    return os.environ.get(RUNTIME_DIR_ENV) or DEFAULT_RUNTIME_DIR
