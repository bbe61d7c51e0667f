"""Helpers for the report tests: a config for a database, and running the command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from credit_exporter import cli

REPO = Path(__file__).resolve().parent.parent


def config_for(dsn: str, tmp_path: Path, report: dict[str, Any] | None = None) -> Path:
    """config.example.yaml pointed at ``dsn`` (plus an optional ``report:`` section)."""
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["databases"]["billing"] = {"dsn": dsn}
    if report is not None:
        config["report"] = report
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def report_json(config: Path, tmp_path: Path, *args: str) -> dict[str, Any]:
    """Run ``credit-exporter report --format json`` in-process and return the document."""
    output = tmp_path / "report.json"
    code = cli.main(
        ["report", "--config", str(config), "--format", "json", "--output", str(output), *args]
    )
    assert code == 0
    return dict(json.loads(output.read_text()))
