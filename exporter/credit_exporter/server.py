"""The HTTP server: the aiohttp app and handlers over an Exporter (lifecycle.py).

Endpoints: ``/`` (landing page with each query's status), ``/metrics``,
``/-/healthy``, ``/-/ready`` (ready once every query has succeeded once) and
``/-/reload`` (POST or PUT; SIGHUP does the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import signal
import sys
import time

from aiohttp import web

from credit_exporter import __version__
from credit_exporter.exposition import CONTENT_TYPE
from credit_exporter.httpguard import ConnectionGuard, GuardedSite
from credit_exporter.lifecycle import Exporter
from credit_exporter.webconfig import WebConfig

__all__ = ["ENDPOINTS", "Exporter", "Handlers", "accepts_gzip", "parse_listen", "serve"]

log = logging.getLogger(__name__)

ENDPOINTS = (
    ("/metrics", "metrics for Prometheus"),
    ("/-/healthy", "liveness: 200 while the process serves"),
    ("/-/ready", "readiness: 200 once every source has succeeded and /metrics shows it"),
    ("/-/reload", "POST to reload the config file (SIGHUP does the same)"),
)


SWITCH_INTERVAL_SECONDS = 0.001


class Handlers:
    """The endpoints, answered from what the exporter holds; they only read it (and ask
    it for a reload)."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    async def handle_metrics(self, request: web.Request) -> web.Response:
        rendered = self.exporter.exposition.current
        headers = {"Content-Type": CONTENT_TYPE, "Vary": "Accept-Encoding"}
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            headers["Content-Encoding"] = "gzip"
            return web.Response(body=rendered.gzipped, headers=headers)
        return web.Response(body=rendered.body, headers=headers)

    async def handle_healthy(self, _: web.Request) -> web.Response:
        return web.Response(text="Healthy.\n")

    async def handle_ready(self, _: web.Request) -> web.Response:
        if self.exporter.ready:
            return web.Response(text="Ready.\n")
        statuses = self.exporter.health.queries.values()
        stalled = sorted(s.name for s in statuses if s.stalled)
        waiting = sorted(s.name for s in statuses if not s.ever_succeeded and not s.stalled)
        reasons = []
        if stalled:
            reasons.append("stalled (no poll completed recently): " + ", ".join(stalled))
        if waiting or not reasons:
            reasons.append("waiting for first success of " + ", ".join(waiting))
        return web.Response(status=503, text="Not ready: " + "; ".join(reasons) + "\n")

    async def handle_reload(self, _: web.Request) -> web.Response:
        ok, problems = await self.exporter.reload()
        if ok:
            return web.Response(text="Reloaded.\n")
        return web.Response(status=400, text="Reload failed:\n" + "\n".join(problems) + "\n")

    async def handle_landing(self, _: web.Request) -> web.Response:
        return web.Response(text=self.landing_page(), content_type="text/html")

    def landing_page(self) -> str:
        now = time.time()
        rows = []
        for status in sorted(self.exporter.health.queries.values(), key=lambda s: s.name):
            age = f"{now - status.last_success:.0f}s ago" if status.last_success else "never"
            error = html.escape(
                f"{status.last_error_reason}: {status.last_error}" if status.last_error else ""
            )
            state = "stalled" if status.stalled else "up" if status.up else "down"
            rows.append(
                f"<tr><td>{html.escape(status.name)}</td>"
                f"<td>{state}</td><td>{status.interval:g}s</td>"
                f"<td>{age}</td><td>{status.rows if status.rows is not None else ''}</td>"
                f"<td>{error}</td></tr>"
            )
        shard = f", shard {self.exporter.shard}" if self.exporter.shard is not None else ""
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


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 12.5.3): ``gzip`` (any
    case) with a q-value above 0, or ``*`` with one when gzip is not named."""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value.strip())
                except ValueError:
                    weight = 0.0  # a malformed q-value: do not guess
        if coding:
            weights[coding.lower()] = weight
    if "gzip" in weights or "x-gzip" in weights:
        return max(weights.get("gzip", 0.0), weights.get("x-gzip", 0.0)) > 0
    return weights.get("*", 0.0) > 0


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
    app = Handlers(exporter).app()
    if web_config is not None:
        web_config.apply(app)
    guard = ConnectionGuard()  # header/keep-alive timeouts, a connection limit
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=guard.idle_timeout)
    await runner.setup()
    ssl_context = web_config.ssl_context if web_config is not None else None
    site = GuardedSite(runner, host, port, guard, ssl_context=ssl_context)
    await site.start()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, exporter.request_reload)
    if on_ready:
        print(on_ready, flush=True)
    log.info("serving /metrics on %s://%s:%d", "https" if ssl_context else "http", host, port)
    try:
        await stop.wait()
    finally:
        log.info(
            "shutting down: closing the HTTP server, stopping %d sources",
            len(exporter.health.queries),
        )
        started = time.monotonic()
        with contextlib.suppress(NotImplementedError):
            loop.remove_signal_handler(signal.SIGHUP)
        await runner.cleanup()
        await exporter.stop()
        log.info("stopped in %.1fs", time.monotonic() - started)
        if exporter.abandoned:
            # asyncio.run() would wait for them without end after we return
            log.error(
                "exiting with %d source task(s) that never stopped: %s",
                len(exporter.abandoned), ", ".join(t.get_name() for t in exporter.abandoned),
            )  # fmt: skip
            logging.shutdown()
            os._exit(1)
