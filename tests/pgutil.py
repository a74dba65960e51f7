"""A throwaway PostgreSQL server on loopback for the tests that run the node on PostgreSQL.

Uses the Debian server binaries (initdb, postgres). PostgreSQL refuses to run as root, so as root the
cluster belongs to `nobody`. The server lives in a temporary folder and is stopped afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from nodeutil import free_port


def server_binaries() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "postgres").exists():
            return Path(candidate)
    return None


class PostgresServer:
    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="msf-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "nobody", "nogroup")
            self._as = ["runuser", "-u", "nobody", "--"]

    def start(self) -> str:
        subprocess.run([*self._as, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "msf",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)
        self.proc = subprocess.Popen(
            [*self._as, str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
             "-c", "fsync=off", "-c", "max_connections=100"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        import psycopg

        while time.monotonic() < deadline:
            try:
                with psycopg.connect(f"host=127.0.0.1 port={self.port} user=msf dbname=postgres",
                                     autocommit=True) as conn:
                    conn.execute("CREATE DATABASE msfollowup")
                return f"postgresql+psycopg://msf@127.0.0.1:{self.port}/msfollowup"
            except psycopg.OperationalError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("PostgreSQL did not start")

    def new_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=msf dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://msf@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None
        shutil.rmtree(self.root, ignore_errors=True)
