"""docker-compose.yml and the Dockerfile, checked without a Docker engine: the Compose
specification's JSON schema, the files it mounts, the addresses the services use to
reach each other, pinned images. tests/test_native_stack.py runs the same topology."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import psycopg
import pytest
import yaml
from conftest import require_binary, skip_or_fail
from support import start_prometheus, wait_until

from credit_exporter.cli import main
from credit_exporter.demo.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
# The Compose specification's schema as docker-compose 1.29.2 ships it
# (compose/config/compose_spec.json); fetched from PyPI once, checked by hash.
SCHEMA_WHEEL = "docker_compose-1.29.2-py2.py3-none-any.whl"
SCHEMA_SHA256 = "8d5589373b35c8d3b1c8c1182c6e4a4ff14bffa3dd0b605fcd08f73c94cef809"
SCHEMA_MEMBER = "compose/config/compose_spec.json"
SCHEMA_CACHE = Path.home() / ".cache" / "credit-exporter" / "compose-spec"


def _load_stack_config() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_config", REPO / "deploy/stack_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack_config"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


stack_config = _load_stack_config()


def compose_schema() -> dict[str, Any]:
    wheel = SCHEMA_CACHE / SCHEMA_WHEEL
    if not wheel.exists():
        SCHEMA_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--dest", str(SCHEMA_CACHE), "docker-compose==1.29.2"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0 or not wheel.exists():
            skip_or_fail(f"cannot download {SCHEMA_WHEEL} from PyPI: {done.stderr[-500:]}")
    data = wheel.read_bytes()
    assert hashlib.sha256(data).hexdigest() == SCHEMA_SHA256, f"{wheel}: unexpected hash"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return dict(json.loads(archive.read(SCHEMA_MEMBER)))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE_FILE.read_text()))


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (a ./host path or a named volume)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        out[target] = source
    return out


def _flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return args[i + 1]
    return None


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def test_compose_file_is_valid_against_the_compose_specification_schema(
    compose: dict[str, Any],
) -> None:
    schema = compose_schema()
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_schema_check_catches_a_misspelt_key(compose: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(compose))
    broken["services"]["exporter"]["depends_onn"] = ["seed"]
    assert not jsonschema.Draft201909Validator(compose_schema()).is_valid(broken)


def test_every_host_file_or_directory_mounted_exists(compose: dict[str, Any]) -> None:
    missing = [
        f"{name}: {source}"
        for name, service in _services(compose).items()
        for source in _mounts(service).values()
        if source.startswith(".") and not (REPO / source).exists()
    ]
    assert not missing
    named = {s for svc in _services(compose).values() for s in _mounts(svc).values()
             if not s.startswith(".")}  # fmt: skip
    assert named <= set(compose["volumes"]), "every named volume is declared"


def test_every_image_is_pinned_to_a_version(compose: dict[str, Any]) -> None:
    for name, service in _services(compose).items():
        image = service["image"]
        tag = image.rpartition(":")[2]
        assert ":" in image and tag != "latest" and re.search(r"\d+\.\d+", tag), (name, image)
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.startswith("ARG ") and "_IMAGE=" in line:
            assert re.search(r":v?\d+\.\d+\.\d+", line), line


def test_dockerfile_runs_as_non_root_with_a_healthcheck_on_healthy_and_same_promtool(
    compose: dict[str, Any],
) -> None:
    text = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert re.search(r"^HEALTHCHECK .*\n?.*/-/healthy", text, re.M)
    assert "curl" not in text and "wget" not in text
    promtool_from = re.search(r"^ARG PROMETHEUS_IMAGE=(\S+)", text, re.M)
    assert promtool_from is not None
    assert promtool_from.group(1) == _services(compose)["prometheus"]["image"]
    # the Compose Prometheus runs as the image's user, who owns the backfilled volume
    assert _services(compose)["prometheus"]["user"] == users[-1]


def test_compose_configs_are_what_stack_config_generates() -> None:
    assert stack_config.main(["--check"]) == 0


def test_prometheus_scrapes_the_exporter_service_on_its_listen_port(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    prometheus = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    listen = _flag(services["exporter"]["command"], "--listen")
    assert listen is not None
    (job,) = prometheus["scrape_configs"]
    assert job["static_configs"][0]["targets"] == [f"exporter:{_port(listen)}"]
    am = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"] and "alertmanager" in services
    assert _flag(services["alertmanager"]["command"], "--web.listen-address") is None  # :9093


def test_prometheus_rule_files_are_the_repository_rules_mounted(compose: dict[str, Any]) -> None:
    prometheus_service = _services(compose)["prometheus"]
    mounts = _mounts(prometheus_service)
    config = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    sources = sorted(mounts[path] for path in config["rule_files"])
    assert sources == [
        "./alert_rules/credit-exporter.rules.yml",
        "./dashboards/recording_rules.yml",
    ]
    assert mounts[_flag(prometheus_service["command"], "--config.file") or ""] == (
        "./deploy/compose/prometheus.yml"
    )
    retention = _flag(prometheus_service["command"], "--storage.tsdb.retention.time")
    assert retention is not None and int(retention.removesuffix("d")) > 90


def test_backfill_writes_into_the_volume_prometheus_reads_with_the_scrape_labels(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    script = (REPO / "deploy/compose/backfill.sh").read_text()
    out = re.search(r'^out="\$\{BACKFILL_OUTPUT:-(\S+)\}"', script, re.M)
    assert out is not None
    volume = _mounts(services["backfill"])[out.group(1)]
    assert _mounts(services["backfill-rules"])["/prometheus"] == volume
    assert services["backfill-rules"]["depends_on"]["prometheus"]["condition"] == (
        "service_healthy"
    )
    assert services["backfill-rules"]["image"] == services["prometheus"]["image"]
    tsdb = _flag(services["prometheus"]["command"], "--storage.tsdb.path")
    assert _mounts(services["prometheus"])[tsdb or ""] == volume
    prometheus = yaml.safe_load((REPO / "deploy/compose/prometheus.yml").read_text())
    job = prometheus["scrape_configs"][0]
    assert f"--label job={job['job_name']}" in script
    instance = job["static_configs"][0]["targets"][0]
    assert f'--label "instance=${{BACKFILL_INSTANCE:-{instance}}}"' in script
    assert services["prometheus"]["depends_on"]["backfill"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["backfill"]["depends_on"]["seed"]["condition"] == (
        "service_completed_successfully"
    )


def test_alertmanager_notifies_the_webhook_service_on_its_listen_port(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    config = yaml.safe_load((REPO / "deploy/compose/alertmanager.yml").read_text())
    mounts = _mounts(services["alertmanager"])
    assert mounts[_flag(services["alertmanager"]["command"], "--config.file") or ""] == (
        "./deploy/compose/alertmanager.yml"
    )
    port = _port(_flag(services["webhook"]["command"], "--listen") or "")
    urls = [c["url"] for r in config["receivers"] for c in r["webhook_configs"]]
    assert urls and all(url.startswith(f"http://webhook:{port}/") for url in urls)


def test_grafana_data_sources_resolve_to_the_prometheus_and_postgres_services(
    compose: dict[str, Any],
) -> None:
    services = _services(compose)
    grafana = services["grafana"]
    mounts = _mounts(grafana)
    env = grafana["environment"]
    provisioning = yaml.safe_load((REPO / "dashboards/provisioning/datasources.yml").read_text())
    referenced = set(re.findall(r"\$\{(\w+)\}", json.dumps(provisioning)))  # not comments
    assert "PROMETHEUS_URL" in referenced
    assert referenced <= set(env), f"unset in Grafana: {referenced - set(env)}"
    assert env["PROMETHEUS_URL"] == "http://prometheus:9090"
    assert env["BILLING_DB_HOST"] == "postgres:5432"
    assert env["BILLING_DB_NAME"] == services["postgres"]["environment"]["POSTGRES_DB"]
    assert mounts["/etc/grafana/provisioning/datasources/credit-exporter.yml"] == (
        "./dashboards/provisioning/datasources.yml"
    )
    dashboards = yaml.safe_load((REPO / "dashboards/provisioning/dashboards.yml").read_text())
    path = dashboards["providers"][0]["options"]["path"]
    assert mounts[path] == "./dashboards/generated"
    assert mounts["/etc/grafana/provisioning/dashboards/credit-exporter.yml"] == (
        "./dashboards/provisioning/dashboards.yml"
    )


def test_exporter_reads_the_dsn_variable_its_config_names(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    variable = config["databases"]["billing"]["dsn_env"]
    for name in ("exporter", "backfill", "seed", "traffic"):
        dsn = _services(compose)[name]["environment"][variable]
        assert "@postgres:5432/billing" in dsn, name


def test_postgres_init_script_makes_a_read_only_role_that_runs_every_query(
    stoppable_postgres: EmbeddedPostgres,
) -> None:
    """The role the exporter, the backfill and Grafana use: granted SELECT on the tables
    the seed creates afterwards (default privileges), refused writes."""
    require_binary("psql")
    server = stoppable_postgres
    env = {**os.environ, "PGHOST": server.host, "PGPORT": str(server.port),
           "POSTGRES_USER": "postgres", "POSTGRES_DB": "postgres",
           "CREDIT_READER_PASSWORD": "reader-test"}  # fmt: skip
    script = REPO / "deploy/compose/postgres-init/10-credit-reader.sh"
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    assert main(["demo-data", "--dsn", server.dsn(), "--days", "1"]) == 0
    reader = f"postgresql://credit_reader:reader-test@{server.host}:{server.port}/postgres"
    check = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", "--connect",
         str(REPO / "config.example.yaml")],
        env={**os.environ, "CREDIT_EXPORTER_DSN": reader}, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "FAIL" not in check.stdout
    with psycopg.connect(reader) as conn, pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.execute("UPDATE credit_pools SET balance = 0")


@pytest.mark.slow
def test_backfill_scripts_write_series_then_recorded_rules_once_into_prometheus_data(
    demo_db: str, tmp_path: Path
) -> None:
    """deploy/compose/backfill.sh and backfill-rules.sh, run natively with the Compose
    paths overridden: the series land in the data directory with the live scrape's
    labels, the recording rules follow once Prometheus serves them, a re-run is a no-op."""
    require_binary("promtool")
    data = tmp_path / "data"
    # The last day's step must not exceed the 5-minute lookback: promtool evaluates the
    # rules at an offset hashed from the group, and at 10m it found no sample in the
    # lookback for half the start times (the test failed depending on the clock).
    env = {**os.environ, "CREDIT_EXPORTER_DSN": demo_db, "BACKFILL_DAYS": "2",
           "BACKFILL_STEP": "1h", "BACKFILL_RECENT_STEP": "5m", "BACKFILL_OUTPUT": str(data),
           "CREDIT_EXPORTER_CONFIG": str(REPO / "config.example.yaml"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    script = REPO / "deploy/compose/backfill.sh"
    subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    blocks = {p.name for p in data.iterdir() if p.is_dir()}
    again = subprocess.run(["sh", str(script)], env=env, check=True, capture_output=True)
    assert b"already backfilled" in again.stdout
    assert {p.name for p in data.iterdir() if p.is_dir()} == blocks
    rules = [str(path) for path in stack_config.RULE_FILES]
    prometheus = start_prometheus(tmp_path, ["127.0.0.1:1"], rule_files=[Path(r) for r in rules])
    try:
        series = prometheus.query("credit_spent_credits_total[1d]")
        assert series and {(r["metric"]["job"], r["metric"]["instance"]) for r in series} == {
            ("credit-exporter", "exporter:9187")
        }
        rules_env = {**env, "PROMETHEUS_DATA": str(data), "PROMETHEUS_URL": prometheus.url,
                     "RULE_FILES": " ".join(rules)}  # fmt: skip
        rules_script = REPO / "deploy/compose/backfill-rules.sh"
        subprocess.run(["sh", str(rules_script)], env=rules_env, check=True, capture_output=True)
        record = "organization_agent:credit_spent_credits:increase1m"
        wait_until(lambda: bool(prometheus.query(f"{record}[1d]")), 90,
                   "the recorded blocks to load", step=1)  # fmt: skip
        again = subprocess.run(["sh", str(rules_script)], env=rules_env, check=True,
                               capture_output=True)  # fmt: skip
        assert b"already backfilled" in again.stdout
        assert not (data / "rules-backfill.tmp").exists()
    finally:
        prometheus.stop()
