"""Real PostgreSQL and MariaDB servers for the snapshot tests: data on the
test's loop filesystems, private sockets, no TCP, stopped afterwards."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import time

import pytest


def _need_user(name: str, server: str) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        pytest.skip("%s is not installed (no '%s' user)" % (server, name))


def require_postgres() -> None:
    """Skips (with the reason) unless a PostgreSQL server can be had here;
    called before anything is chowned to its user."""
    for name in ("postgres", "initdb", "pg_ctl", "pg_amcheck"):
        pg_bin(name)
    for tool in ("psql", "pgbench", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip("%s is not installed (PostgreSQL client tools, util-linux)" % tool)
    _need_user("postgres", "PostgreSQL server")


def require_mariadb() -> None:
    """Skips (with the reason) unless a MariaDB server can be had here;
    called before anything is chowned to its user."""
    for tool in ("mariadb-install-db", "mariadbd", "mariadb"):
        if shutil.which(tool) is None:
            pytest.skip("MariaDB server is not installed (no %s)" % tool)
    _need_user("mysql", "MariaDB server")


def pg_bin(name: str) -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/%s" % name))
    if not found:
        pytest.skip("PostgreSQL server binaries are not installed")
    return found[-1]


def sh(*argv, user=None, check=True, timeout=120, **kw):
    if user:
        argv = ("runuser", "-u", user, "--") + argv
    kw.setdefault("cwd", "/")   # the server's user may not enter the caller's directory
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s" % (" ".join(argv), p.returncode, p.stdout))
    return p


class Postgres:
    """A PostgreSQL cluster in DATADIR, listening only on a socket in SOCKDIR."""

    def __init__(self, datadir: str, sockdir: str, port: int):
        self.datadir, self.sockdir, self.port = datadir, sockdir, port
        self.log = os.path.join(sockdir, "server-%d.log" % port)

    def init(self):
        require_postgres()
        os.makedirs(self.datadir, exist_ok=True)
        shutil.chown(self.datadir, "postgres", "postgres")
        os.chmod(self.datadir, 0o700)
        sh(pg_bin("initdb"), "-D", self.datadir, "-A", "trust", "-U", "postgres", "--no-sync",
           user="postgres")
        return self

    def start(self):
        sh(pg_bin("pg_ctl"), "-D", self.datadir, "-l", self.log, "-w", "-t", "60", "-o",
           "-p %d -k %s -c listen_addresses='' -c fsync=on" % (self.port, self.sockdir), "start",
           user="postgres")
        return self

    def stop(self):
        sh(pg_bin("pg_ctl"), "-D", self.datadir, "-m", "immediate", "-w", "stop",
           user="postgres", check=False)

    def psql(self, sql: str) -> str:
        return sh("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.sockdir,
                  "-p", str(self.port), "-d", "postgres", "-c", sql, user="postgres").stdout.strip()

    def conn_args(self):
        return ["-h", self.sockdir, "-p", str(self.port)]


class MariaDB:
    """A MariaDB server in DATADIR on a private socket, no networking."""

    def __init__(self, datadir: str, rundir: str, name: str):
        self.datadir, self.rundir = datadir, rundir
        self.socket = os.path.join(rundir, "%s.sock" % name)
        self.pidfile = os.path.join(rundir, "%s.pid" % name)
        self.errlog = os.path.join(rundir, "%s.err" % name)
        self.proc = None

    def init(self):
        require_mariadb()
        os.makedirs(self.datadir, exist_ok=True)
        shutil.chown(self.datadir, "mysql", "mysql")
        sh("mariadb-install-db", "--user=mysql", "--datadir=%s" % self.datadir,
           "--auth-root-authentication-method=socket", "--skip-test-db")
        return self

    def start(self):
        self.proc = subprocess.Popen(
            ["mariadbd", "--no-defaults", "--user=mysql", "--datadir=%s" % self.datadir,
             "--socket=%s" % self.socket, "--pid-file=%s" % self.pidfile, "--skip-networking",
             "--log-error=%s" % self.errlog, "--innodb-buffer-pool-size=32M"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            if sh("mariadb", "--socket=%s" % self.socket, "-e", "SELECT 1", check=False).returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        log = open(self.errlog).read() if os.path.exists(self.errlog) else ""
        raise AssertionError("mariadbd did not start:\n%s" % log[-3000:])

    def sql(self, sql: str, check=True) -> str:
        return sh("mariadb", "--socket=%s" % self.socket, "-N", "-B", "-e", sql,
                  check=check).stdout.strip()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
