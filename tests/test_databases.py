"""Proof on restored snapshots, with real PostgreSQL and MariaDB servers and
the ready scripts in examples/.  Each server's data lives on a loop
filesystem; the snapshot step copies that filesystem's image; the copy is
mounted and a second server is started on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from .conftest import root_only
from .dbservers import MariaDB, Postgres, free_port, pg_bin, require_mariadb, require_postgres, sh
from .helpers import codes, run_json, write_config

pytestmark = [root_only, pytest.mark.slow, pytest.mark.ci_required]
EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def install_examples(tmp_path, app, pre_params, post_params, **fields):
    """Copies examples/APP/{pre,post}.sh to a root-owned 700 place and writes a config."""
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755, exist_ok=True)
    for name in ("pre.sh", "post.sh"):
        shutil.copy(os.path.join(EXAMPLES, app, name), etc / name)
        os.chmod(etc / name, 0o700)
    cfg = {"preScriptLocation": str(etc / "pre.sh"), "postScriptLocation": str(etc / "post.sh"),
           "preScriptParams": pre_params, "postScriptParams": post_params,
           "timeoutInSeconds": 60, "hooksDirectory": str(tmp_path / "no-hooks")}
    cfg.update(fields)
    return write_config(etc / "config.json", **cfg)


def world_traversable(path):
    os.chmod(path, 0o755)
    return path


# -- PostgreSQL ----------------------------------------------------------------------

def test_postgresql_under_pgbench_load_restores_clean(tmp_path, loopfs):
    require_postgres()
    (m,) = loopfs.make(1, size_mb=256)
    world_traversable(loopfs.base)
    sock = os.path.join(loopfs.base, "sock")
    os.makedirs(sock)
    shutil.chown(sock, "postgres", "postgres")
    pg = Postgres(os.path.join(m, "pgdata"), sock, free_port()).init().start()
    copy = os.path.join(loopfs.base, "snapshot.img")
    load = None
    try:
        sh("pgbench", "-q", "-i", "-s", "2", *pg.conn_args(), "postgres", user="postgres")
        pg.psql("CREATE TABLE marker (v text); INSERT INTO marker VALUES ('before-snapshot')")
        load = subprocess.Popen(["runuser", "-u", "postgres", "--", "pgbench", "-c", "2", "-T", "60",
                                 *pg.conn_args(), "postgres"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/")
        time.sleep(2)
        committed = int(pg.psql("SELECT count(*) FROM pgbench_history"))
        assert committed > 0, "pgbench is not writing"
        params = ["-h", sock, "-p", str(pg.port)]
        cfg = install_examples(tmp_path, "postgresql", params, params)
        rc, res, p = run_json(tmp_path, cfg, [m],
                              snapshot=["cp", "--sparse=always", loopfs.image_of(m), copy])
        assert rc == 0, (res["errors"], p.stderr)
        assert res["consistency"] == "application"
        assert "checkpoint done" in res["pre_script"]["output"]
        assert "server answers" in res["post_script"]["output"]
        assert load.poll() is None, "the load died during the snapshot"
    finally:
        if load is not None:
            load.terminate()
            load.wait()
        pg.stop()
    restored = loopfs.attach(copy)
    datadir = os.path.join(restored, "pgdata")
    # the copy carries the running server's lock file; on another host it is stale
    os.unlink(os.path.join(datadir, "postmaster.pid"))
    pg2 = Postgres(datadir, sock, free_port()).start()
    try:
        check = sh(pg_bin("pg_amcheck"), "--install-missing", "--heapallindexed", *pg2.conn_args(),
                   "-d", "postgres", user="postgres", check=False)
        assert check.returncode == 0 and check.stdout.strip() == "", check.stdout
        assert pg2.psql("SELECT v FROM marker") == "before-snapshot"
        assert int(pg2.psql("SELECT count(*) FROM pgbench_history")) >= committed
    finally:
        pg2.stop()


# -- MariaDB ---------------------------------------------------------------------------

@pytest.fixture
def mariadb(loopfs):
    require_mariadb()   # before anything is chowned to its user
    (m,) = loopfs.make(1, size_mb=512)
    world_traversable(loopfs.base)
    rundir = os.path.join(loopfs.base, "run")
    os.makedirs(rundir)
    shutil.chown(rundir, "mysql", "mysql")
    db = MariaDB(os.path.join(m, "mysql"), rundir, "primary").init().start()
    db.sql("CREATE DATABASE app; CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, "
           "v VARCHAR(200)) ENGINE=MyISAM")
    load = subprocess.Popen(["sh", "-c", "yes \"INSERT INTO app.t (v) VALUES (REPEAT('x', 150));\""
                             " | mariadb --socket=%s" % db.socket],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    time.sleep(1)
    try:
        yield db, m, rundir
    finally:
        os.killpg(load.pid, 15)
        load.wait()
        db.stop()


def check_restored(loopfs, copy, rundir, name):
    restored = loopfs.attach(copy)
    db2 = MariaDB(os.path.join(restored, "mysql"), rundir, name).start()
    try:
        return db2.sql("CHECK TABLE app.t", check=False), int(db2.sql("SELECT count(*) FROM app.t"))
    finally:
        db2.stop()


def test_mariadb_myisam_with_scripts_is_clean_every_round(tmp_path, loopfs, mariadb):
    db, m, rundir = mariadb
    state = os.path.join(rundir, "vmsnap-state")
    cfg = install_examples(tmp_path, "mariadb", ["-S", db.socket, "-s", state], ["-s", state])
    for i in range(3):
        before = int(db.sql("SELECT count(*) FROM app.t"))
        copy = os.path.join(loopfs.base, "snap%d.img" % i)
        rc, res, p = run_json(tmp_path, cfg, [m],
                              snapshot=["cp", "--sparse=always", loopfs.image_of(m), copy])
        assert rc == 0 and res["consistency"] == "application", (res["errors"], p.stderr)
        assert "read lock held" in res["pre_script"]["output"]
        assert "read lock released" in res["post_script"]["output"]
        out, rows = check_restored(loopfs, copy, rundir, "restored%d" % i)
        assert out == "app.t\tcheck\tstatus\tOK", "round %d: %s" % (i, out)
        assert rows >= before
        time.sleep(0.3)
    assert int(db.sql("SELECT count(*) FROM app.t")) > rows, "writes did not resume"


def test_mariadb_without_scripts_is_only_filesystem_consistent(tmp_path, loopfs, mariadb):
    # The contrast: the same load with the scripts disabled.  Only the freeze
    # protects the copy: the MyISAM table is caught open, in the middle of
    # the inserts, which CHECK TABLE on the restored copy reports (the
    # scripts' FLUSH TABLES WITH READ LOCK closes it: "OK" alone above).
    db, m, rundir = mariadb
    copy = os.path.join(loopfs.base, "nosnap.img")
    rc, res, _ = run_json(tmp_path, tmp_path / "no-config.json", [m],
                          snapshot=["cp", "--sparse=always", loopfs.image_of(m), copy])
    assert rc == 0 and res["consistency"] == "filesystem" and res["pre_script"] is None
    out, _ = check_restored(loopfs, copy, rundir, "contrast")
    lines = out.splitlines()
    assert lines and all(line.startswith("app.t\tcheck\t") for line in lines), out
    assert "hasn't closed the table properly" in out or "\terror\t" in out, \
        "a copy taken without the scripts came back clean:\n%s" % out


def test_mariadb_lock_lost_before_snapshot_ends_is_not_application_consistent(
        tmp_path, loopfs, mariadb):
    db, m, rundir = mariadb
    state = os.path.join(rundir, "vmsnap-state")
    cfg = install_examples(tmp_path, "mariadb", ["-S", db.socket, "-s", state], ["-s", state])
    copy = os.path.join(loopfs.base, "lost.img")
    # the snapshot step kills the session that holds the lock, then copies
    kill_then_copy = "kill $(cat %s/client.pid); sleep 0.2; cp --sparse=always %s %s" % (
        state, loopfs.image_of(m), copy)
    rc, res, _ = run_json(tmp_path, cfg, [m], snapshot=["sh", "-c", kill_then_copy])
    assert res["consistency"] == "filesystem" and res["status"] == "degraded" and rc == 3
    assert codes(res) == ["Post-ScriptExecutionFailed"]
    assert "lock was lost" in res["post_script"]["output"]
    assert "not application-consistent" in res["errors"][0]["message"]
