"""What the figures were measured on."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cebench import pg

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Machine:
    date: str
    cpus: int
    memory: str
    postgres: str
    python: str
    kernel: str
    revision: str
    settings: str  # PostgreSQL settings that shape the big aggregates


def _memory() -> str:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "unknown"


def _revision() -> str:
    """HEAD, and whether the engine or config had uncommitted changes (read-only git)."""

    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
        return result.stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "exporter", "config.example.yaml")
    if dirty:
        return f"{head} (+ uncommitted changes under exporter/ or config.example.yaml)"
    return head


def _settings(admin_dsn: str) -> str:
    names = ("shared_buffers", "work_mem", "jit", "max_parallel_workers_per_gather")
    values = [pg.execute(admin_dsn, f"SHOW {name}")[0][0] for name in names]
    return ", ".join(f"{name}={value}" for name, value in zip(names, values, strict=True))


def describe(admin_dsn: str) -> Machine:
    return Machine(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cpus=len(os.sched_getaffinity(0)),  # what nproc prints
        memory=_memory(),
        postgres=pg.server_version(admin_dsn).split(" on ")[0],
        python=platform.python_version(),
        kernel=platform.release(),
        revision=_revision(),
        settings=_settings(admin_dsn),
    )
