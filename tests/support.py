"""Test support: run the real exporter as a subprocess and read its /metrics."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from credit_exporter.demo.embedded import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def http_post(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def parse_samples(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def select(samples: Samples, name: str, **labels: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Series of ``name`` whose labels include ``labels``."""
    return {
        key: value
        for (sample_name, key), value in samples.items()
        if sample_name == name and all(dict(key).get(k) == v for k, v in labels.items())
    }


@dataclass
class Service:
    """A real server process started by a test, with its log."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def launch(
    name: str,
    argv: Callable[[int], list[str]],
    workdir: Path,
    ready_path: str,
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``argv(port)`` on a free loopback port; wait until ``ready_path`` answers 200."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / f"{name}-{port}.log"
    process = subprocess.Popen(
        argv(port), stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise AssertionError(f"{name} exited {process.returncode}:\n{log}")
        try:
            return http_get(f"{url}{ready_path}")[0] == 200
        except OSError:
            return False

    wait_until(ready, timeout, f"{name} to serve {ready_path}")
    return process, url, log_path


@dataclass
class ExporterProcess(Service):
    config_path: Path

    def metrics_text(self) -> str:
        status, body, _ = http_get(f"{self.url}/metrics")
        assert status == 200, status
        return body.decode()

    def samples(self) -> Samples:
        return parse_samples(self.metrics_text())

    def value(self, name: str, **labels: str) -> float | None:
        found = select(self.samples(), name, **labels)
        assert len(found) <= 1, f"{name}{labels} matches {len(found)} series"
        return next(iter(found.values()), None)


def start_exporter(
    config: dict[str, Any], workdir: Path, env: dict[str, str] | None = None
) -> ExporterProcess:
    """Start ``credit-exporter run`` on a free loopback port; wait until it serves."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    process, url, log_path = launch(
        "exporter",
        lambda port: [sys.executable, "-m", "credit_exporter", "run", "--config",
                      str(config_path), "--listen", f"127.0.0.1:{port}", "--log-level", "debug"],
        workdir, "/-/healthy", timeout=20, env=env,
    )  # fmt: skip
    return ExporterProcess(process, url, log_path, config_path)


@dataclass
class PrometheusProcess(Service):
    """A real Prometheus (Debian's package) on loopback, for queries against real scrapes."""

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query; returns the result vector (raises on a query error)."""
        import json
        import urllib.parse

        status, body, _ = http_get(
            f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        )
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise AssertionError(f"query failed ({status}): {promql}: {data.get('error')}")
        return list(data["data"]["result"])

    def api(self, path: str) -> Any:
        import json

        status, body, _ = http_get(f"{self.url}{path}")
        assert status == 200, (status, body[:500])
        return json.loads(body)["data"]


def start_prometheus(
    workdir: Path,
    targets: list[str],
    rule_files: list[Path] | None = None,
    alertmanager: str | None = None,
    interval: str = "1s",
    extra_args: list[str] | None = None,
    remote_write: list[dict[str, Any]] | None = None,
) -> PrometheusProcess:
    """Start ``prometheus`` scraping ``targets`` (host:port) every ``interval``.

    Skips (or fails under CREDIT_EXPORTER_REQUIRE_ALL=1) when the binary is missing.
    """
    from conftest import require_binary

    binary = require_binary("prometheus")
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": "credit-exporter", "static_configs": [{"targets": targets}]}
        ],
    }
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if remote_write:
        config["remote_write"] = remote_write
    if alertmanager:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    process, url, log_path = launch(
        "prometheus",
        lambda port: [binary, f"--config.file={config_path}",
                      f"--storage.tsdb.path={workdir / 'data'}",
                      f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
                      *(extra_args or [])],
        workdir, "/-/ready",
    )  # fmt: skip
    return PrometheusProcess(process, url, log_path)
