"""A throwaway PostgreSQL server for tests: initdb + pg_ctl in a temp dir, loopback port.

Debian's `postgresql` package provides the binaries (no system service is used). As
root (CI), the server runs as the `postgres` user, since initdb refuses root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


class PostgresServer:
    """One throwaway server: ``start()`` (again after ``stop()``), ``stop(mode)``,
    ``url`` (admin), ``close()`` removes it."""

    def __init__(self) -> None:
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries not found: apt-get install postgresql")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="smsops-pg-"))
        self.data, sock = self.root / "data", self.root / "sock"
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            shutil.chown(sock, "postgres")
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"
        subprocess.run(
            _as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-locale",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.opts = (
            f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
            # a zone other than UTC: shows any naive-datetime mix-up in the store
            "-c timezone=Asia/Tokyo"
        )

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run(
            _as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), *args]),
            check=check,
            capture_output=True,
        )

    def start(self) -> PostgresServer:
        self._ctl("-o", self.opts, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self, mode: str = "immediate") -> None:
        """``immediate``: the server dies at once, as in a crash (no checkpoint)."""
        self._ctl("-m", mode, "-w", "stop", check=False)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield an admin URL (``postgresql+psycopg://postgres@127.0.0.1:PORT``)."""
    server = PostgresServer().start()
    try:
        yield server.url
    finally:
        server.close()


def create_database(admin_url: str, template: str | None = None) -> str:
    """A fresh database on the server, empty or a copy of the database at the URL
    ``template`` (which no one may be connected to); returns its URL."""
    import psycopg

    name = f"smsops_{uuid.uuid4().hex[:12]}"
    plain = admin_url.replace("postgresql+psycopg://", "postgresql://")
    copy = f' TEMPLATE "{template.rsplit("/", 1)[1]}"' if template else ""
    with psycopg.connect(f"{plain}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
    return f"{admin_url}/{name}"
