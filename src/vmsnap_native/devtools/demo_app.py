"""The demo's sample application: writes continuously to an SQLite database.

    python -m vmsnap_native.devtools.demo_app DB CONTROL_DIR

SIGUSR1: commit and pause (then writes "paused ROWS" to CONTROL_DIR/app.status);
SIGUSR2: resume ("running ROWS"); SIGTERM: stop.  The status file lives
outside the filesystem being frozen.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time

BATCH = 20


def write_status(control_dir: str, text: str) -> None:
    tmp = os.path.join(control_dir, "app.status.tmp")
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.rename(tmp, os.path.join(control_dir, "app.status"))


def main(db: str, control_dir: str) -> int:
    want = {"pause": False, "stop": False}
    signal.signal(signal.SIGUSR1, lambda *_: want.update(pause=True))
    signal.signal(signal.SIGUSR2, lambda *_: want.update(pause=False))
    signal.signal(signal.SIGTERM, lambda *_: want.update(stop=True))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, at REAL, payload TEXT)")
    rows = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    with open(os.path.join(control_dir, "app.pid"), "w") as f:
        f.write("%d\n" % os.getpid())
    write_status(control_dir, "running %d" % rows)
    while not want["stop"]:
        if want["pause"]:
            # every transaction is committed here: the database on disk is complete
            write_status(control_dir, "paused %d" % rows)
            while want["pause"] and not want["stop"]:
                time.sleep(0.005)   # the handlers flip the flags
            write_status(control_dir, "running %d" % rows)
            continue
        conn.execute("BEGIN")
        for _ in range(BATCH):
            conn.execute("INSERT INTO events (at, payload) VALUES (?, ?)",
                         (time.time(), "x" * 200))
        conn.execute("COMMIT")
        rows += BATCH
        if rows % (BATCH * 25) == 0:
            write_status(control_dir, "running %d" % rows)
        time.sleep(0.002)
    conn.close()
    write_status(control_dir, "stopped %d" % rows)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
