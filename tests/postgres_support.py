"""A private PostgreSQL cluster on loopback for the tests (Debian's ``postgresql``: initdb, pg_ctl).

PostgreSQL refuses to run as root, and the tests may: then the server runs as ``nobody`` (through
``setpriv``), its data directory owned by that user in a fresh directory under the system's temp
dir (pytest's own tmp dirs are root's, 0700, which ``nobody`` cannot enter). Passwords are on
(scram-sha-256) so that the gateway's ``password_file`` is exercised for real.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ports import free_port

BIN = Path("/usr/lib/postgresql/15/bin")
USER, PASSWORD = "gateway", "pg-test-secret"


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    return str(BIN / name) if (BIN / name).is_file() else None


def postgres_missing() -> str | None:
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if _binary(name) is None]
    if missing:
        return f"PostgreSQL server binaries not found ({', '.join(missing)}; Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    return None


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in a fresh directory; :meth:`database` makes a database per test."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pg-"))
        self.data, self.port = self.root / "data", free_port()
        self.password_file = self.root / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self._as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        pwfile = self.root / "initdb-password"
        pwfile.write_text(PASSWORD + "\n")
        if self._as:
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        self._run(_binary("initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "--auth=scram-sha-256",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        pwfile.unlink()
        self._run(_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "30",
                  "-o", f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories='' "
                        "-c fsync=off -c max_connections=60", "start")
        self.conninfo = f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres connect_timeout=5"
        self._count = 0

    def _run(self, *command: str) -> None:
        done = subprocess.run([*self._as, *command], check=False, capture_output=True, text=True, cwd=self.root,
                              stdin=subprocess.DEVNULL, timeout=60)
        if done.returncode != 0:
            log = self.root / "server.log"
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}"
                               f"{log.read_text()[-2000:] if log.exists() else ''}")

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(f"{self.conninfo.replace('dbname=postgres', f'dbname={dbname}')}", password=PASSWORD,
                               autocommit=True)

    def database(self, prefix: str = "t") -> str:
        """A new empty database; returns its conninfo (no password: that is :attr:`password_file`)."""
        self._count += 1
        name = f"{prefix}_{self._count}_{int(time.time() * 1000) % 100000}"
        with self.connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo.replace("dbname=postgres", f"dbname={name}")

    def pids(self) -> list[int]:
        """The server's processes: the postmaster and its children (perf/ reads their CPU)."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return []
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    children.append(int(stat.parent.name))
            except (OSError, ValueError, IndexError):
                continue
        return [postmaster, *children]

    def stop(self) -> None:
        try:
            self._run(_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
