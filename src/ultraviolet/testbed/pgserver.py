"""A private PostgreSQL cluster for tests and benchmarks: initdb + pg_ctl of the host's
PostgreSQL (Debian's `postgresql`) in a temporary directory, listening on a unix socket only (no
TCP port to collide with or to expose), run as the `postgres` user when we run as root
(PostgreSQL refuses to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import ToolError
from ultraviolet.tools import run_host


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's program directory, None if none is installed."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


@dataclass
class PostgresServer:
    bindir: Path
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    @classmethod
    def create(cls) -> PostgresServer:
        bindir = postgres_bindir()
        if bindir is None:
            missing = "PostgreSQL is not installed (apt-get install postgresql)"
            raise ToolError(["pg_ctl"], None, missing)
        root = Path(tempfile.mkdtemp(prefix="uv-pg-", dir="/tmp"))
        server = cls(bindir, root)
        server.socket_dir.mkdir()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (root, server.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        run_host(
            server._as_owner(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(server.data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            ),
            timeout=120,
        )
        return server

    def start(self) -> None:
        options = f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir}"
        run_host(
            self._as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.log),
                    "-o",
                    options,
                    "-w",
                    "start",
                ]
            ),
            timeout=120,
        )

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: no checkpoint, recovery from the WAL on the next start."""
        run_host(
            self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "stop"]),
            timeout=120,
            check=False,
        )

    def create_database(self, name: str) -> str:
        """A new empty database; its SQLAlchemy URL (psycopg 3 over the unix socket)."""
        run_host(
            [str(self.bindir / "createdb"), "-h", str(self.socket_dir), "-U", "postgres", name],
            timeout=60,
        )
        return f"postgresql+psycopg://postgres@/{name}?host={self.socket_dir}"

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
