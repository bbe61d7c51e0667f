"""The HTTP server and the runtime that ties config, sources, state and exposition together.

Endpoints: ``/`` (landing page with each query's status), ``/metrics``,
``/-/healthy``, ``/-/ready`` (ready once every query has succeeded once) and
``/-/reload`` (POST or PUT; SIGHUP does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from credit_exporter import __version__
from credit_exporter.config import Config, ConfigError, load_config
from credit_exporter.db import Database
from credit_exporter.exposition import CONTENT_TYPE, Exposition
from credit_exporter.health import Health
from credit_exporter.metric_state import MetricState, StateRenderer
from credit_exporter.sharding import Shard
from credit_exporter.sharding import apply as apply_shard
from credit_exporter.sources.events import EventStream, StreamRenderer
from credit_exporter.sources.state import StateQuery
from credit_exporter.webconfig import WebConfig

log = logging.getLogger(__name__)

ENDPOINTS = (
    ("/metrics", "metrics for Prometheus"),
    ("/-/healthy", "liveness: 200 while the process serves"),
    ("/-/ready", "readiness: 200 once every source has succeeded and /metrics shows it"),
    ("/-/reload", "POST to reload the config file (SIGHUP does the same)"),
)


SWITCH_INTERVAL_SECONDS = 0.001


def _max_backoff(intervals: list[float]) -> float:
    """Reconnect backoff cap: below the shortest interval, so recovery takes one interval."""
    return max(1.0, min(30.0, min(intervals, default=30.0) / 2))


class Exporter:
    """Owns the running configuration: databases, query tasks, metric state, exposition."""

    def __init__(
        self, config: Config, config_path: Path | None = None, shard: Shard | None = None
    ) -> None:
        self.shard = shard
        self.config = apply_shard(config, shard)  # raises ConfigError if it cannot be split
        self.config_path = config_path
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = Health(self.registry)
        self.state = MetricState()
        self.databases: dict[str, Database] = {}
        self.queries: dict[str, StateQuery] = {}
        self.streams: dict[str, EventStream] = {}
        self.exposition = Exposition(
            self.registry, self.health, [StateRenderer(self.state), StreamRenderer(self.streams)]
        )
        self._polled = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._renderer: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        self._kept_streams: dict[str, EventStream] = {}
        self.health.config_loaded(True)

    # --- lifecycle -----------------------------------------------------------
    def _build(self, config: Config) -> None:
        floors: dict[str, dict[Any, Any]] = {}  # what the streams of the last config exported
        for kept in self._kept_streams.values():
            floors.update(kept.exported)
        for db_name, db_config in config.databases.items():
            sources = [*config.queries.values(), *config.streams.values()]
            intervals = [q.interval for q in sources if q.database == db_name]
            self.databases[db_name] = Database(db_name, db_config, _max_backoff(intervals))
        for name, query_config in config.queries.items():
            if name not in self.health.queries:
                self.health.register_query(name, query_config.interval)
            else:
                self.health.queries[name].interval = query_config.interval
            self.queries[name] = StateQuery(
                name, query_config, self.databases[query_config.database], self.state, self.health
            )
        for name, stream_config in config.streams.items():
            if name not in self.health.queries:
                self.health.register_query(name, stream_config.interval)
            for mapping in stream_config.metrics:
                self.health.register_metric(mapping.metric, ("counter_decrease",))
            previous = self._kept_streams.get(name)
            if previous is not None and previous.config == stream_config:
                # unchanged on reload: keep its base (no start-up aggregate again)
                previous.database = self.databases[stream_config.database]
                self.streams[name] = previous
            else:
                stream = EventStream(
                    name, stream_config, self.databases[stream_config.database], self.health
                )
                # a counter never goes down within a process, whichever stream fed it
                stream.floor = {
                    m.metric: floors[m.metric] for m in stream_config.metrics if m.metric in floors
                }
                self.streams[name] = stream

    def _start_tasks(self) -> None:
        self._tasks = [
            asyncio.create_task(query.run_forever(self._polled), name=f"query-{name}")
            for name, query in self.queries.items()
        ] + [
            asyncio.create_task(stream.run_forever(self._polled), name=f"stream-{name}")
            for name, stream in self.streams.items()
        ]

    async def start(self) -> None:
        self._build(self.config)
        self.exposition.render()
        self._renderer = asyncio.create_task(self.exposition.render_on_poll(self._polled))
        self._start_tasks()

    async def _stop_sources(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for database in self.databases.values():
            await database.close()
        self._kept_streams = dict(self.streams)
        self.databases, self.queries = {}, {}
        self.streams.clear()  # the stream renderer holds this same dict

    async def stop(self) -> None:
        await self._stop_sources()
        if self._renderer is not None:
            self._renderer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renderer

    async def reload(self) -> tuple[bool, list[str]]:
        """Validate the config file first; on any problem keep the running config."""
        async with self._reload_lock:
            if self.config_path is None:
                return False, ["no config file to reload (started without --config)"]
            try:
                new_config = apply_shard(load_config(self.config_path), self.shard)
            except ConfigError as exc:
                self.health.config_loaded(False)
                self._polled.set()  # publish the failed-reload gauge now
                log.error("reload rejected, keeping the running config: %s", exc)
                return False, exc.problems
            await self._stop_sources()
            for name in (
                set(self.health.queries) - set(new_config.queries) - set(new_config.streams)
            ):
                if name in self.config.streams:
                    metrics = [m.metric for m in self.config.streams[name].metrics]
                    self.health.forget_stream(name, metrics)
                else:
                    self.health.forget_query(name)
                self.state.forget(name)
            self.config = new_config
            self._build(new_config)
            self._kept_streams = {}
            self._start_tasks()
            self.health.config_loaded(True)
            self._polled.set()
            log.info("config reloaded from %s", self.config_path)
            return True, []

    # --- HTTP ----------------------------------------------------------------
    async def handle_metrics(self, request: web.Request) -> web.Response:
        rendered = self.exposition.current
        headers = {"Content-Type": CONTENT_TYPE}
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=rendered.gzipped, headers=headers)
        return web.Response(body=rendered.body, headers=headers)

    async def handle_healthy(self, _: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def handle_ready(self, _: web.Request) -> web.Response:
        # ready when the body a scrape gets holds every source, not merely when
        # the last source succeeded (the body is re-rendered just after)
        if self.health.ready and self.exposition.current.complete:
            return web.Response(text="Ready.\n")
        waiting = sorted(n for n, s in self.health.queries.items() if not s.ever_succeeded)
        return web.Response(
            status=503, text="Not ready: waiting for first success of " + ", ".join(waiting) + "\n"
        )

    async def handle_reload(self, _: web.Request) -> web.Response:
        ok, problems = await self.reload()
        if ok:
            return web.Response(text="Reloaded.\n")
        return web.Response(status=400, text="Reload failed:\n" + "\n".join(problems) + "\n")

    async def handle_landing(self, _: web.Request) -> web.Response:
        return web.Response(text=self.landing_page(), content_type="text/html")

    def landing_page(self) -> str:
        now = time.time()
        rows = []
        for status in sorted(self.health.queries.values(), key=lambda s: s.name):
            age = f"{now - status.last_success:.0f}s ago" if status.last_success else "never"
            error = html.escape(
                f"{status.last_error_reason}: {status.last_error}" if status.last_error else ""
            )
            rows.append(
                f"<tr><td>{html.escape(status.name)}</td>"
                f"<td>{'up' if status.up else 'down'}</td><td>{status.interval:g}s</td>"
                f"<td>{age}</td><td>{status.rows if status.rows is not None else ''}</td>"
                f"<td>{error}</td></tr>"
            )
        shard = f", shard {self.shard}" if self.shard is not None else ""
        links = "".join(
            f'<li><a href="{path}">{path}</a>: {html.escape(what)}</li>' for path, what in ENDPOINTS
        )
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>credit-exporter</title>"
            "</head><body>"
            f"<h1>credit-exporter {__version__}{shard}</h1><ul>{links}</ul>"
            "<h2>Queries</h2><table border='1' cellpadding='4'>"
            "<tr><th>query</th><th>status</th><th>interval</th><th>last success</th>"
            "<th>rows</th><th>last error</th></tr>" + "".join(rows) + "</table></body></html>"
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.handle_landing)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/-/healthy", self.handle_healthy)
        app.router.add_get("/-/ready", self.handle_ready)
        app.router.add_post("/-/reload", self.handle_reload)
        app.router.add_put("/-/reload", self.handle_reload)
        return app


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) into a bind address."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def serve(
    exporter: Exporter,
    listen: str,
    stop: asyncio.Event,
    on_ready: str | None = None,
    web_config: WebConfig | None = None,
) -> None:
    """Run the exporter and its HTTP server until ``stop`` is set.

    ``web_config`` (``--web.config.file``) adds TLS, basic auth and headers.
    """
    host, port = parse_listen(listen)
    # Row conversion and rendering run in threads and hold the GIL in 5 ms
    # slices by default; a scrape waiting on the event loop pays one slice per
    # wake-up. 1 ms keeps scrape latency low while a 100k-series poll lands.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    await exporter.start()
    app = exporter.app()
    if web_config is not None:
        web_config.apply(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ssl_context = web_config.ssl_context if web_config is not None else None
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(exporter.reload()))
    if on_ready:
        print(on_ready, flush=True)
    log.info("serving /metrics on %s://%s:%d", "https" if ssl_context else "http", host, port)
    try:
        await stop.wait()
    finally:
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
        await exporter.stop()
