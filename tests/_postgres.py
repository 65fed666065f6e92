"""A throwaway PostgreSQL cluster for the feedback-store tests: Debian's server binaries
(``apt-get install postgresql``; `make test` installs them), ``initdb`` into a temporary directory,
``pg_ctl start`` listening on a Unix socket in that directory only (no TCP port, so parallel test
workers and other servers never collide), trust authentication for the cluster's own superuser,
fsync off (nothing here needs to survive a crash). Each test gets its own database, dropped after.

PostgreSQL refuses to run as root, and CI runs as root: the cluster then belongs to the ``postgres``
account the Debian package creates (else ``nobody``), and its processes run as that user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "postgres"  # the cluster's own superuser role, whatever OS user runs it


def server_bindir() -> Path | None:
    """The newest Debian server install (/usr/lib/postgresql/<major>/bin), or initdb on $PATH."""
    def major(path: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", path)
        return int(m.group(1)) if m else 0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if (Path(d) / "initdb").is_file() and (Path(d) / "pg_ctl").is_file():
            return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and (Path(initdb).parent / "pg_ctl").is_file() else None


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


class Cluster:
    """One running cluster; :meth:`new_database` hands out SQLAlchemy URLs of fresh databases."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="rlhfkit-pg-"))  # short: socket paths max ~107 bytes
        self.data, self.log = self.root / "data", self.root / "server.log"
        self._as: dict = {}
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                user = pwd.getpwnam("nobody")
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
            os.chown(self.root, user.pw_uid, user.pw_gid)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--no-instructions")
        opts = f"-k {self.root} -c listen_addresses='' -c fsync=off -c synchronous_commit=off " \
               "-c full_page_writes=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def _run(self, exe: str, *args: str) -> None:
        r = subprocess.run([str(self.bindir / exe), *args], capture_output=True, text=True, timeout=120,
                           cwd=self.root, **self._as)
        if r.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{exe} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{log}")

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host=str(self.root), user=SUPERUSER, dbname="postgres", autocommit=True) as c:
            c.execute(sql)

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@/{database}?host={self.root}"

    def new_database(self) -> tuple[str, str]:
        """(name, SQLAlchemy URL) of a new empty database."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self._admin(f'CREATE DATABASE "{name}"')
        return name, self.url(name)

    def drop_database(self, name: str) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
