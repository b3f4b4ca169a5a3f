"""A real PostgreSQL server (Debian's package ``postgresql``) in a fresh cluster: ``initdb`` in a
temporary folder, ``postgres`` on a free loopback port (no Unix socket), stopped by its PID.

The cluster asks for a password (``scram-sha-256``), so that tests pass it the way a config does:
``${VAR}`` in the DSN. initdb and postgres refuse to run as root: as root, the cluster's folder
belongs to the ``postgres`` user (which the Debian package creates) and both run as that user.
A stop (fast shutdown) and a start keep the data.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.daemon import free_port, stop_server

PASSWORD = "s3cret-pass"
USER = "postgres"


def postgres_binaries() -> Path:
    """The folder of ``initdb`` and ``postgres`` (Debian keeps them off PATH, in /usr/lib/postgresql/N/bin)."""
    found = shutil.which("initdb")
    if found is not None:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if not versions:
        raise RuntimeError("initdb is missing: scripts/ensure-system-deps.sh installs it (Debian package postgresql)")
    return Path(versions[-1]).parent


class PostgresServer:
    def __init__(self) -> None:
        self.bin = postgres_binaries()
        self.as_user: dict[str, Any] = {}
        owner = None
        if os.geteuid() == 0:  # initdb refuses root: the cluster is the postgres user's
            account = pwd.getpwnam("postgres")
            owner = (account.pw_uid, account.pw_gid)
            self.as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        # not under pytest's tmp_path: its folders are 0700 and root's, which the postgres user cannot enter
        self.folder = Path(tempfile.mkdtemp(prefix="headrace-pg-"))
        if owner is not None:
            os.chown(self.folder, *owner)
        self.data = self.folder / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        pwfile = self.folder / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if owner is not None:
            os.chown(pwfile, *owner)
        done = subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-A", "scram-sha-256",
                               "-E", "UTF8", "--locale", "C", "--no-sync"], capture_output=True, check=False, **self.as_user)  # fmt: skip
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
        self.start()

    @property
    def dsn(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def dsn_with(self, password_var: str) -> str:
        """The DSN as a config writes it: the password from ``${VAR}``."""
        return f"postgresql://{USER}:${{{password_var}}}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        """Start the server on its port and wait until it takes connections (it says so in its log)."""
        path = self.folder / "postgres.log"
        offset = path.stat().st_size if path.exists() else 0  # a restart appends: only what this start wrote counts
        log = open(path, "ab")  # noqa: SIM115 - the server writes it while it runs
        # fsync off: the tests stop the server cleanly (a checkpoint at shutdown), never the machine
        self.proc = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1", "-k", "",
                                      "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off",
                                      "-c", "max_connections=40", "-c", "shared_buffers=32MB"],
                                     stdout=log, stderr=log, **self.as_user)  # fmt: skip
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.proc.returncode}): {path.read_text()[-2000:]}")
            if b"ready to accept connections" in path.read_bytes()[offset:]:
                return
            time.sleep(0.05)
        raise RuntimeError(f"postgres was not ready within 30 s: {path.read_text()[-2000:]}")

    def stop(self) -> None:
        """A fast shutdown (SIGINT: sessions are ended, a checkpoint written), by PID."""
        stop_server(self.proc, signal.SIGINT)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    async def afetch(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    def fetch(self, sql: str, *args: Any) -> list[Any]:
        """Run one statement on a connection of its own (from a test's thread, outside any loop); its rows."""
        return asyncio.run(self.afetch(sql, *args))

    def execute(self, sql: str) -> None:
        """Run statements (several, separated by ``;``) on a connection of their own."""

        async def run() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.dsn, timeout=5)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(run())
