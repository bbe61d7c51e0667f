"""Hostile HTTP traffic: floods without credentials, user enumeration by timing, idle and
trickling sockets at the open-file limit, content negotiation, and small leaks (issue 14).

Everything talks to a real exporter process (or a real aiohttp server in-process for the
timeouts, which are shortened there) and the real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import psycopg
import pytest
import yaml
from aiohttp import web
from conftest import REPO
from support import Service, http_get, parse_samples, select, start_exporter, wait_until

from credit_exporter import logs
from credit_exporter.config import DatabaseConfig
from credit_exporter.db import Database, QueryError
from credit_exporter.demo.embedded import free_port
from credit_exporter.webconfig import BasicAuth

USER, PASSWORD = "prometheus", "Sc-r4pe-pass"
SECRET_TAIL = "Zx9-after-the-at-sign"
EXAMPLE = yaml.safe_load((REPO / "config.example.yaml").read_text())


def _query(interval: str = "1s") -> dict[str, Any]:
    return {
        "database": "billing", "interval": interval, "timeout": "1s",
        "sql": "SELECT slug AS gen_ai_request_model, provider AS gen_ai_provider_name, tier, "
        "multiplier FROM models",
        "metrics": [{"metric": "credit_model_multiplier_ratio", "value": "multiplier",
                     "labels": ["gen_ai_request_model", "gen_ai_provider_name", "tier"]}],
    }  # fmt: skip


def _auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _start(
    workdir: Path,
    dsn: str,
    queries: int = 1,
    web: dict[str, Any] | None = None,
    nofile: int | None = None,
) -> Service:
    """``credit-exporter run`` on a free port, optionally with a web config and an open-file
    limit; returns once it answers (a 401 counts as answering)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "databases": {"billing": {"dsn": dsn}},
        "queries": {name: {**query, "interval": "1s", "timeout": "1s"} for name, query in
                    list(EXAMPLE["queries"].items())[:queries]},
    }))  # fmt: skip
    argv = [sys.executable, "-m", "credit_exporter", "run", "--config", str(config)]
    if web is not None:
        web_file = workdir / "web.yml"
        web_file.write_text(yaml.safe_dump(web))
        argv += ["--web.config.file", str(web_file)]
    port = free_port()
    log_path = workdir / "exporter.log"

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    process = subprocess.Popen(
        [*argv, "--listen", f"127.0.0.1:{port}"], stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT, preexec_fn=limit,
    )  # fmt: skip
    service = Service(process, f"http://127.0.0.1:{port}", log_path)
    _STARTED.append(service)

    def answering() -> bool:
        assert process.poll() is None, service.log()
        try:
            return http_get(service.url + "/-/healthy")[0] in (200, 401)
        except OSError:
            return False

    wait_until(answering, 20, "the exporter to answer")
    return service


_STARTED: list[Service] = []


@pytest.fixture(autouse=True)
def _stop_started() -> Iterator[None]:
    yield
    while _STARTED:
        _STARTED.pop().stop()


async def _get(
    port: int, path: str, headers: dict[str, str], source: str = "127.0.0.1",
    timeout: float = 10,
) -> tuple[int, bytes]:  # fmt: skip
    """One HTTP/1.1 GET over a fresh connection from ``source`` (any 127.0.0.0/8 address)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout
    )
    try:
        lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close"]
        lines += [f"{key}: {value}" for key, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0
    return status, answer.partition(b"\r\n\r\n")[2]


# --- basic auth under attack ------------------------------------------------------------------


def test_failed_attempts_do_not_evict_a_verified_password() -> None:
    """18,525 over-long passwords in 3 s pushed the valid entry out of the cache."""
    auth = BasicAuth({USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4))}, cache_size=8)
    assert auth.check(USER, PASSWORD)
    started = time.perf_counter()
    for attempt in range(3000):
        assert not auth.check(USER, f"{attempt:04d}" + "x" * 80)  # over bcrypt's 72 bytes
    for attempt in range(50):
        assert not auth.check(USER, f"guess-{attempt}")
    assert auth.is_cached(USER, PASSWORD), "a failed attempt evicted the good entry"
    # the long ones were refused without bcrypt (3,000 checks at cost 4 take seconds)
    assert time.perf_counter() - started < 3.0


def test_unauthenticated_flood_keeps_polls_on_schedule_and_scrapes_fast(
    schema_db: str, tmp_path: Path
) -> None:
    """200 clients from 200 addresses send random passwords for 12 s while 4 sources
    poll every second: every source stays up and keeps its cadence, and a scrape with
    valid credentials stays fast."""
    web = {
        "basic_auth_users": {USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()}
    }
    exporter = _start(tmp_path, schema_db, queries=4, web=web)
    port = int(exporter.url.rsplit(":", 1)[1])
    good = {"Authorization": _auth(USER, PASSWORD)}

    def scrape_ok() -> bool:
        status, body, _ = http_get(exporter.url + "/metrics", good)
        ups = select(parse_samples(body.decode()), "credit_exporter_query_up") if (
            status == 200) else {}  # fmt: skip
        return len(ups) == 4 and all(value == 1 for value in ups.values())

    wait_until(scrape_ok, 30, "every source up (and the valid password cached)")

    async def run() -> tuple[list[float], list[dict[Any, float]], dict[int, int]]:
        stop = time.monotonic() + 12
        answers: dict[int, int] = {}

        async def attacker(n: int) -> None:
            source = f"127.0.{1 + n // 250}.{2 + n % 250}"
            while time.monotonic() < stop:
                user = random.choice([USER, f"user{random.randrange(10**6)}"])
                headers = {"Authorization": _auth(user, os.urandom(8).hex())}
                try:
                    status, _ = await _get(port, "/metrics", headers, source, timeout=20)
                except (TimeoutError, OSError):
                    status = -1
                answers[status] = answers.get(status, 0) + 1

        async def scraper() -> tuple[list[float], list[dict[Any, float]]]:
            latencies, samples = [], []
            await asyncio.sleep(1)
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    status, body = await _get(port, "/metrics", good, timeout=20)
                except (TimeoutError, OSError):
                    status, body = -1, b""
                latencies.append(time.monotonic() - started if status == 200 else 99.0)
                if status == 200:
                    samples.append(parse_samples(body.decode()))
                await asyncio.sleep(1)
            return latencies, samples

        tasks = [asyncio.create_task(attacker(n)) for n in range(200)]
        latencies, samples = await scraper()
        await asyncio.gather(*tasks)
        return latencies, samples, answers

    latencies, samples, answers = asyncio.run(run())
    print(f"flood answers {answers}; valid scrapes {[round(x, 3) for x in latencies]}")
    assert sum(answers.values()) > 200, answers  # the flood did reach the server
    assert statistics.median(latencies) < 2.0, latencies  # 0.2-0.9 s measured
    assert len(samples) >= 5, latencies
    for sample in samples:
        ups = select(sample, "credit_exporter_query_up")
        assert ups and all(value == 1 for value in ups.values()), ups
    first, last = samples[0], samples[-1]
    runs_first = select(first, "credit_exporter_query_duration_seconds_count")
    runs_last = select(last, "credit_exporter_query_duration_seconds_count")
    seconds = len(samples) - 1  # scrapes one second apart, at least
    for key, count in runs_last.items():
        assert count - runs_first[key] >= 0.5 * seconds, (key, count - runs_first[key], seconds)


def test_a_client_that_keeps_failing_is_throttled(schema_db: str, tmp_path: Path) -> None:
    web = {"basic_auth_users": {USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()}}
    exporter = _start(tmp_path, schema_db, web=web)
    statuses = [
        http_get(exporter.url + "/metrics", {"Authorization": _auth(USER, f"guess-{n}")})[0]
        for n in range(40)
    ]
    assert statuses[:5] == [401] * 5 and 429 in statuses, statuses
    # the right password, once verified, is never throttled
    assert http_get(exporter.url + "/metrics", {"Authorization": _auth(USER, PASSWORD)})[0] in (
        200, 429)  # fmt: skip


def test_unknown_user_takes_as_long_as_a_wrong_password_at_cost_14(
    schema_db: str, tmp_path: Path
) -> None:
    """At cost 14 a wrong user answered in 257 ms and a wrong password in 1,017 ms."""
    web = {
        "basic_auth_users": {USER: bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(14)).decode()}
    }
    exporter = _start(tmp_path, schema_db, web=web)
    timings: dict[str, list[float]] = {"wrong user": [], "wrong password": []}
    for attempt in range(3):
        for kind, user in (("wrong user", "nobody"), ("wrong password", USER)):
            started = time.perf_counter()
            status, _, _ = http_get(
                exporter.url + "/metrics", {"Authorization": _auth(user, f"guess-{attempt}")}
            )
            timings[kind].append(time.perf_counter() - started)
            assert status == 401
    ratio = statistics.median(timings["wrong user"]) / statistics.median(timings["wrong password"])
    print(f"cost 14: {timings}")
    assert 0.5 <= ratio <= 2.0, timings


# --- connections ------------------------------------------------------------------------------


def test_silent_sockets_at_a_low_open_file_limit_do_not_block_metrics(
    schema_db: str, tmp_path: Path
) -> None:
    """With 256 open files, 300 silent sockets made /metrics time out and wrote 240 MB of
    'accept(): Too many open files' in 78 s."""
    exporter = _start(tmp_path, schema_db, nofile=256)
    port = int(exporter.url.rsplit(":", 1)[1])
    silent = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        silent.append(sock)
    opened = time.monotonic()
    time.sleep(2)
    for _ in range(3):
        started = time.monotonic()
        status, body, _ = http_get(exporter.url + "/metrics")
        assert status == 200 and b"credit_exporter_query_up" in body
        print(f"/metrics with 300 silent sockets: {time.monotonic() - started:.3f}s")
    assert len(exporter.log().splitlines()) < 200

    def closed(sock: socket.socket) -> bool:
        sock.settimeout(0.01)
        try:
            return sock.recv(1) == b""
        except TimeoutError:
            return False
        except OSError:
            return True  # reset

    wait_until(lambda: all(closed(s) for s in silent), 20, "the silent sockets to be closed")
    print(f"all silent sockets closed after {time.monotonic() - opened:.1f}s")
    assert time.monotonic() - opened >= 5  # ... by the header timeout, not at once
    for sock in silent:
        sock.close()
    assert http_get(exporter.url + "/metrics")[0] == 200
    print(f"log lines: {len(exporter.log().splitlines())}")
    assert len(exporter.log().splitlines()) < 200


def test_trickling_headers_are_cut_off_by_the_running_exporter(
    schema_db: str, tmp_path: Path
) -> None:
    """A byte of header every half second kept a connection for as long as it went on."""
    exporter = _start(tmp_path, schema_db)
    sock = socket.create_connection(("127.0.0.1", int(exporter.url.rsplit(":", 1)[1])))
    started = time.monotonic()
    sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    try:
        while time.monotonic() - started < 20:
            sock.sendall(b"X")
            time.sleep(0.5)
    except OSError:
        pass  # closed by the server
    else:
        _closed_after(sock, 0.5)
    assert time.monotonic() - started < 15  # the header timeout is 10 s
    sock.close()


class _InProcessServer:
    """A real aiohttp server with a ConnectionGuard of short timeouts, on its own loop."""

    def __init__(self, max_connections: int = 100) -> None:
        from credit_exporter.httpguard import ConnectionGuard

        self.port = free_port()
        self.guard = ConnectionGuard(max_connections, header_timeout=1.0, idle_timeout=2.0)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        from credit_exporter.httpguard import GuardedSite

        async def hello(_: web.Request) -> web.Response:
            return web.Response(text="hello\n")

        async def start() -> None:
            app = web.Application(middlewares=[self.guard.middleware])
            app.router.add_get("/", hello)
            self.runner = web.AppRunner(app, access_log=None)
            await self.runner.setup()
            await GuardedSite(self.runner, "127.0.0.1", self.port, self.guard).start()

        self.loop.run_until_complete(start())
        self._ready.set()
        self.loop.run_forever()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def guarded() -> Iterator[_InProcessServer]:
    server = _InProcessServer(max_connections=20)
    yield server
    server.close()


def _closed_after(sock: socket.socket, limit: float) -> float:
    """Seconds until the server closes ``sock`` (reading and discarding what it sends)."""
    started = time.monotonic()
    sock.settimeout(limit)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        raise AssertionError(f"still open after {limit}s") from None
    except OSError:
        pass
    return time.monotonic() - started


def test_trickling_headers_are_cut_off_at_the_header_timeout(guarded: _InProcessServer) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    started = time.monotonic()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    closed = False
    for _ in range(20):  # a header byte every 0.2 s, never finishing
        try:
            sock.sendall(b"X")
        except OSError:
            closed = True
            break
        time.sleep(0.2)
    if not closed:
        _closed_after(sock, 3)
    assert 0.8 <= time.monotonic() - started < 3.5


def test_idle_keep_alive_connections_are_closed(guarded: _InProcessServer) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    elapsed = _closed_after(sock, 6)
    assert 1.5 <= elapsed < 4.5  # idle_timeout is 2 s


def test_past_the_connection_limit_the_oldest_idle_connection_is_closed(
    guarded: _InProcessServer,
) -> None:
    idle = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(20)]
    time.sleep(0.3)
    for _ in range(3):  # each new connection pushes out the oldest silent one
        status, body, _ = http_get(f"http://127.0.0.1:{guarded.port}/")
        assert (status, body) == (200, b"hello\n")
    assert _closed_after(idle[0], 0.5) < 0.5
    assert guarded.guard.open_connections <= 20
    for sock in idle:
        sock.close()


def test_repeated_log_lines_are_rate_limited() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.RepeatFilter(burst=10, window=60))
    logger = logging.getLogger("test.repeats")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        for _ in range(10_000):
            logger.error("socket.accept() out of system resource")
        logger.error("something else")
        for query in range(20):  # one line per query: the same template, different text
            logger.error("query %s failed", f"q{query}")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines.count("socket.accept() out of system resource") == 10
    assert "something else" in lines
    assert sum(line.startswith("query q") for line in lines) == 20


# --- content negotiation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept,gzip",
    [("gzip", True), ("GZIP", True), ("deflate, gzip;q=0.5", True), ("gzip;q=0", False),
     ("gzip; q=0.000", False), ("nogzipplease", False), ("*", True), ("*, gzip;q=0", False),
     ("identity", False), ("", False)],
)  # fmt: skip
def test_gzip_is_negotiated_by_coding_and_q_value(accept: str, gzip: bool) -> None:
    from credit_exporter.server import accepts_gzip

    assert accepts_gzip(accept) is gzip


def test_metrics_answers_vary_on_accept_encoding(schema_db: str, tmp_path: Path) -> None:
    exporter = _start(tmp_path, schema_db)
    for accept, encoded in (("gzip;q=0", False), ("nogzipplease", False), ("GZIP", True)):
        status, body, headers = http_get(exporter.url + "/metrics", {"Accept-Encoding": accept})
        assert status == 200
        assert headers.get("Vary") == "Accept-Encoding"
        assert (headers.get("Content-Encoding") == "gzip") is encoded, accept
        assert body.startswith(b"\x1f\x8b") is encoded, accept


# --- small leaks and errors -------------------------------------------------------------------


def test_an_unencoded_at_sign_in_a_dsn_password_does_not_leak_the_rest(
    tmp_path: Path,
) -> None:
    dsn = f"postgresql://credit:p@{SECRET_TAIL}@127.0.0.1:1/billing"
    env = {**os.environ, "BILLING_DSN": dsn}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "databases": {"billing": {"dsn_env": "BILLING_DSN"}}, "queries": {"q0": _query()},
    }))  # fmt: skip
    checked = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(config), "--connect"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    output = checked.stdout + checked.stderr
    assert checked.returncode == 1, output
    assert "unencoded '@'" in output and SECRET_TAIL not in output, output

    exporter = start_exporter(yaml.safe_load(config.read_text()), tmp_path / "run", env=env)
    try:
        wait_until(
            lambda: "unencoded" in http_get(exporter.url + "/")[1].decode(), 20,
            "the landing page to report the DSN",
        )  # fmt: skip
        page = http_get(exporter.url + "/")[1].decode()
    finally:
        exporter.stop()
    assert SECRET_TAIL not in page, page
    log = exporter.log()
    assert "unencoded '@'" in log and SECRET_TAIL not in log, log


def test_a_lock_wait_is_reported_as_a_lock(schema_db: str) -> None:
    """A query blocked by another session's lock said only 'statement timeout'."""
    with psycopg.connect(schema_db) as holder:
        holder.execute("LOCK TABLE models IN ACCESS EXCLUSIVE MODE")

        async def run() -> QueryError:
            database = Database("billing", DatabaseConfig(dsn=schema_db, statement_timeout="1s"))
            try:
                await database.fetch("SELECT count(*) FROM models", timeout=5)
            except QueryError as exc:
                return exc
            finally:
                await database.close()
            raise AssertionError("the query ran through an exclusive lock")

        error = asyncio.run(run())
        holder.rollback()
    assert error.reason == "timeout"
    assert "lock" in str(error), error
    # and a plain slow query is still a plain timeout
    with pytest.raises(QueryError) as slow:
        asyncio.run(_fetch(schema_db, "SELECT pg_sleep(3)"))
    assert slow.value.reason == "timeout" and "lock" not in str(slow.value)


async def _fetch(dsn: str, query: str) -> None:
    database = Database("billing", DatabaseConfig(dsn=dsn, statement_timeout="1s"))
    try:
        await database.fetch(query, timeout=5)
    finally:
        await database.close()
