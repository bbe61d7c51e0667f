"""/metrics under load: the real exporter process serving ~100k series to concurrent scrapers.

The series come from a state query over ``generate_series`` (one budget scope
per user), so no table is needed. Scrapers are aiohttp clients on loopback in
this process, each requesting back to back (a closed loop: the harshest form of
"N concurrent scrapers") until the time is up; bodies are read but not
decompressed, as Prometheus would receive them.
"""

from __future__ import annotations

import asyncio
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from cebench.net import free_port, listening_process
from cebench.stats import percentile

METRIC = "credit_budget_used_credits"
QUERY_INTERVAL = "30s"


def exporter_config(dsn: str, series: int) -> dict[str, object]:
    sql = (
        "SELECT 'org-' || (i % 100) AS organization, 'user' AS scope, "
        "'user-' || i AS scope_id, (i % 977) * 1.25 AS used "
        f"FROM generate_series(1, {int(series)}) AS i"
    )
    return {
        "databases": {"billing": {"dsn": dsn, "statement_timeout": "30s"}},
        "queries": {
            "budget_scopes": {
                "database": "billing",
                "interval": QUERY_INTERVAL,
                "timeout": "30s",
                "sql": sql,
                "metrics": [
                    {"metric": METRIC, "value": "used",
                     "labels": ["organization", "scope", "scope_id"]},
                ],
            }
        },
    }  # fmt: skip


@dataclass(frozen=True)
class Exporter:
    url: str
    pid: int


@contextmanager
def running_exporter(config_path: Path, log_path: Path) -> Iterator[Exporter]:
    port = free_port()
    command = [
        sys.executable, "-m", "credit_exporter", "run", "--config", str(config_path),
        "--listen", f"127.0.0.1:{port}", "--log-level", "warning",
    ]  # fmt: skip
    with listening_process(command, port, log_path) as process:
        yield Exporter(f"http://127.0.0.1:{port}", process.pid)


def series_served(url: str) -> int:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as response:
        body = response.read()
    return body.count(b"\n" + METRIC.encode() + b"{")


def wait_for_series(url: str, series: int, timeout: float = 120.0) -> float:
    """Seconds until /metrics serves every series (first poll rendered)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if series_served(url) >= series:
            return time.monotonic() - started
        time.sleep(0.5)
    raise TimeoutError(f"/metrics did not reach {series} series in {timeout:.0f}s")


def rss_bytes(pid: int, field: str = "VmRSS") -> int:
    """VmRSS (current) or VmHWM (peak) of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


@dataclass(frozen=True)
class LoadMode:
    """``clients`` scrapers, paced at ``period`` seconds (phases spread) or back to back."""

    name: str
    clients: int
    encoding: str  # Accept-Encoding: gzip (what Prometheus sends) or identity
    period: float | None

    def schedule(self, index: int, deadline: float) -> Schedule:
        phase = 0.0 if self.period is None else self.period * index / self.clients
        return Schedule(deadline, self.period, phase)


@dataclass(frozen=True)
class LoadResult:
    mode: LoadMode
    latencies: list[float]  # seconds, sorted
    seconds: float
    body_bytes: int
    rss_max: int  # highest VmRSS sampled during the load
    failures: int

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies) / self.seconds


@dataclass(frozen=True)
class Schedule:
    """When one scraper sends: back to back (``period`` None) or every ``period`` seconds.

    A paced scraper that falls behind skips the ticks it missed, as Prometheus does.
    """

    deadline: float
    period: float | None = None
    phase: float = 0.0

    async def ticks(self) -> AsyncIterator[None]:
        start = time.monotonic() + self.phase
        n = 0
        while True:
            if self.period is not None:
                due = start + n * self.period
                now = time.monotonic()
                if due < now:
                    n += int((now - due) // self.period) + 1
                    due = start + n * self.period
                if due >= self.deadline:
                    return
                await asyncio.sleep(due - now)
                n += 1
            elif time.monotonic() >= self.deadline:
                return
            yield


async def _scraper(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], schedule: Schedule,
    latencies: list[float], sizes: list[int],
) -> int:  # fmt: skip
    failures = 0
    async for _ in schedule.ticks():
        started = time.perf_counter()
        async with session.get(url, headers=headers) as response:
            body = await response.read()
        if response.status != 200:
            failures += 1
            continue
        latencies.append(time.perf_counter() - started)
        sizes.append(len(body))
    return failures


async def _sample_rss(pid: int, deadline: float, into: list[int]) -> None:
    while time.monotonic() < deadline:
        into.append(rss_bytes(pid))
        await asyncio.sleep(0.25)


async def _load(exporter: Exporter, mode: LoadMode, seconds: float) -> LoadResult:
    headers = {"Accept-Encoding": mode.encoding}
    latencies: list[float] = []
    sizes: list[int] = []
    rss: list[int] = []
    connector = aiohttp.TCPConnector(limit=mode.clients)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=connector, auto_decompress=False, timeout=timeout
    ) as session:
        started = time.monotonic()
        deadline = started + seconds
        sampler = asyncio.create_task(_sample_rss(exporter.pid, deadline, rss))
        url = f"{exporter.url}/metrics"
        failures = await asyncio.gather(
            *(
                _scraper(session, url, headers, mode.schedule(i, deadline), latencies, sizes)
                for i in range(mode.clients)
            )
        )
        elapsed = time.monotonic() - started
        await sampler
    return LoadResult(
        mode=mode,
        latencies=sorted(latencies),
        seconds=elapsed,
        body_bytes=max(sizes, default=0),
        rss_max=max(rss, default=0),
        failures=sum(failures),
    )


def load(exporter: Exporter, mode: LoadMode, seconds: float) -> LoadResult:
    """Run one load mode for ``seconds`` (bounded: it stops by itself)."""
    return asyncio.run(_load(exporter, mode, seconds))


def write_config(path: Path, dsn: str, series: int) -> None:
    path.write_text(yaml.safe_dump(exporter_config(dsn, series), sort_keys=False))
