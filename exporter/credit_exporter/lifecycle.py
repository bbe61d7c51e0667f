"""The exporter's runtime: the running config's databases and source tasks, coalesced
reloads, a bounded stop and the stalled-source watchdog. The HTTP side (server.py)
reads from it; nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from credit_exporter.config import Config, ConfigError, load_config
from credit_exporter.db import Database
from credit_exporter.exposition import Exposition
from credit_exporter.health import STALL_INTERVALS, Health
from credit_exporter.metric_state import MetricState, StateRenderer
from credit_exporter.sharding import Shard
from credit_exporter.sharding import apply as apply_shard
from credit_exporter.sources.events import EventStream, StreamRenderer
from credit_exporter.sources.state import RETRY_CAP_SECONDS, StateQuery

log = logging.getLogger(__name__)

# How long a reload or shutdown waits for the cancelled source tasks, and then for
# each database's pool to close. psycopg waits up to 5 s for a query it cancels.
SOURCE_STOP_TIMEOUT = 6.0
# The watchdog's period (see health.STALL_INTERVALS for when a source is stalled).
WATCHDOG_PERIOD = 1.0

Source = StateQuery | EventStream


def _max_backoff(intervals: list[float]) -> float:
    """Reconnect backoff cap: below the shortest interval and never above the sources'
    own retry cap, so a database that is back is used within seconds whatever the
    intervals."""
    return max(1.0, min(RETRY_CAP_SECONDS, min(intervals, default=30.0) / 2))


def _detach(source: Source) -> None:
    """Point a source that would not stop at throwaway state and health, so whatever it
    still does lands nowhere the exporter reads."""
    registry = CollectorRegistry(auto_describe=False)
    health = Health(registry)
    health.register_query(source.name, source.config.interval)
    source.health = health
    if isinstance(source, StateQuery):
        source.state = MetricState()


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
        self._tasks: dict[asyncio.Task[None], Source] = {}
        self._renderer: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._reload_lock = asyncio.Lock()
        # the reload that runs next; every request made meanwhile shares its answer
        self._next_reload: asyncio.Future[tuple[bool, list[str]]] | None = None
        self._reload_tasks: set[asyncio.Task[None]] = set()
        # tasks that did not stop when cancelled, detached from everything and let go
        self.abandoned: set[asyncio.Task[None]] = set()
        self._kept_streams: dict[str, EventStream] = {}
        self._previous_streams: dict[str, EventStream] = {}
        self.health.config_loaded(True)

    def _build(self, config: Config) -> None:
        floors: dict[str, dict[Any, Any]] = {}  # what the streams of the last config exported
        for previous in self._previous_streams.values():
            floors.update(previous.exported)
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
                    name,
                    stream_config,
                    self.databases[stream_config.database],
                    self.health,
                    checkpoint=config.checkpoint,  # settled state kept between runs
                )
                # a counter never goes down within a process, whichever stream fed it
                stream.floor = {
                    m.metric: floors[m.metric] for m in stream_config.metrics if m.metric in floors
                }
                # and until its first poll it shows what was shown: a scrape between the
                # reload and that poll must not find the counters gone
                stream.exported.update({m: dict(s) for m, s in stream.floor.items()})
                self.streams[name] = stream

    def _start_tasks(self) -> None:
        self._tasks = {}
        for name, query in self.queries.items():
            self.health.watch(name, query.config.timeout)
            task = asyncio.create_task(query.run_forever(self._polled), name=f"query-{name}")
            self._tasks[task] = query
        for name, stream in self.streams.items():
            self.health.watch(name, stream.config.timeout, stream.config.startup_timeout)
            task = asyncio.create_task(stream.run_forever(self._polled), name=f"stream-{name}")
            self._tasks[task] = stream

    async def start(self) -> None:
        self._build(self.config)
        self.exposition.render()
        self._renderer = asyncio.create_task(self.exposition.render_on_poll(self._polled))
        self._start_tasks()
        self._watchdog = asyncio.create_task(self._watch(), name="watchdog")

    async def _watch(self) -> None:
        """Every WATCHDOG_PERIOD: mark the sources that stopped polling, whatever the cause."""
        while True:
            await asyncio.sleep(WATCHDOG_PERIOD)
            stalled, recovered = self.health.check_stalls()
            for status in stalled:
                log.error(
                    "source %s stalled: no poll completed for %.0fs (limit: %d intervals of "
                    "%gs plus its timeout); not ready until it polls again",
                    status.name, time.monotonic() - status.last_poll,
                    STALL_INTERVALS, status.interval,
                )  # fmt: skip
            for status in recovered:
                log.info("source %s polls again", status.name)
            if stalled or recovered:
                self._polled.set()  # publish the gauges now: no poll will

    async def _stop_sources(self) -> None:
        """Cancel every source task and wait, at most SOURCE_STOP_TIMEOUT, for them.

        A task still running then is logged, detached (its writes go to throwaway
        state) and abandoned: a reload or shutdown never waits on it again.
        """
        tasks = self._tasks  # cleared once waited for: a stop() interrupting us waits again
        for task in tasks:
            task.cancel()
        stuck: set[asyncio.Task[None]] = set()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=SOURCE_STOP_TIMEOUT)
        self._tasks = {}
        for task in tasks:
            task.add_done_callback(_retrieve)
        for task in stuck:
            source = tasks[task]
            log.error(
                "source %s did not stop within %gs of its cancellation; abandoning its task "
                "(it can no longer change exported values)", source.name, SOURCE_STOP_TIMEOUT,
            )  # fmt: skip
            _detach(source)
            self.abandoned.add(task)
            task.add_done_callback(self.abandoned.discard)
        for database in self.databases.values():
            try:
                async with asyncio.timeout(SOURCE_STOP_TIMEOUT):
                    await database.close()
            except TimeoutError:
                log.error("database %s: its pool did not close within %gs; leaving it",
                          database.name, SOURCE_STOP_TIMEOUT)  # fmt: skip
        self._previous_streams = dict(self.streams)
        self._kept_streams = {
            name: stream for name, stream in self.streams.items()
            if all(source is not stream for source in (tasks[t] for t in stuck))
        }  # fmt: skip
        self.databases, self.queries = {}, {}
        self.streams.clear()  # the stream renderer holds this same dict

    async def stop(self) -> None:
        """Stop everything, bounded: reloads in flight, sources, watchdog, renderer."""
        for task in self._reload_tasks:
            task.cancel()
        if self._reload_tasks:
            await asyncio.wait(self._reload_tasks, timeout=SOURCE_STOP_TIMEOUT)
        await self._stop_sources()
        for task in (self._watchdog, self._renderer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def request_reload(self) -> asyncio.Future[tuple[bool, list[str]]]:
        """Ask for a reload; returns the future of its outcome.

        Reloads are serialised and coalesced: while one runs, every request
        shares the single reload that starts after it (a storm of SIGHUPs is
        one reload now and at most one more).
        """
        if self._next_reload is None:
            future: asyncio.Future[tuple[bool, list[str]]] = (
                asyncio.get_running_loop().create_future()
            )
            self._next_reload = future
            task = asyncio.create_task(self._run_reload(future), name="reload")
            self._reload_tasks.add(task)
            task.add_done_callback(self._reload_tasks.discard)
        return self._next_reload

    async def _run_reload(self, future: asyncio.Future[tuple[bool, list[str]]]) -> None:
        try:
            async with self._reload_lock:
                self._next_reload = None  # a request from now on needs a reload after this
                future.set_result(await self._reload())
        except BaseException as exc:
            if self._next_reload is future:
                self._next_reload = None
            if not future.done():
                future.set_exception(
                    exc if isinstance(exc, Exception) else RuntimeError("reload interrupted")
                )
                future.exception()  # retrieved: nobody may be waiting
            if not isinstance(exc, Exception):
                raise
            log.error("reload failed unexpectedly: %s", exc, exc_info=exc)

    async def reload(self) -> tuple[bool, list[str]]:
        """Reload the config file (see request_reload); on any problem keep the running
        config. The caller's cancellation (a client gone) does not cancel the reload."""
        return await asyncio.shield(self.request_reload())

    async def _reload(self) -> tuple[bool, list[str]]:
        """Validate the config file first; on any problem keep the running config."""
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
        for name in set(self.health.queries) - set(new_config.queries) - set(new_config.streams):
            if name in self.config.streams:
                metrics = [m.metric for m in self.config.streams[name].metrics]
                self.health.forget_stream(name, metrics)
            else:
                self.health.forget_query(name)
            self.state.forget(name)
        self.config = new_config
        self._build(new_config)
        self._kept_streams, self._previous_streams = {}, {}
        self._start_tasks()
        self.health.config_loaded(True)
        self._polled.set()
        log.info("config reloaded from %s", self.config_path)
        return True, []

    @property
    def ready(self) -> bool:
        """Every source has succeeded (and none is stalled), and the body a scrape gets
        holds them all: not merely the last source's success (the body is re-rendered
        just after)."""
        return self.health.ready and self.exposition.current.complete


def _retrieve(task: asyncio.Task[None]) -> None:
    """A stopped source task's outcome, read so asyncio does not warn about it."""
    if not task.cancelled() and task.exception() is not None:
        log.error("source task %s ended with an error", task.get_name(), exc_info=task.exception())
