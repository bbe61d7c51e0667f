"""docs/extending.md stays true: its walk-through for adding one counter, performed on a
copy of the repository (catalogue entry, config mapping, dashboard panel), then the
one command, produces the metrics reference entry and the panel, and the mapping
passes check-config."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "extending.md"
IGNORED = shutil.ignore_patterns(".venv", ".git", "__pycache__", "preview", "benchmarks", "*.png")


def snippet(language: str, number: int) -> str:
    """The ``number``-th fenced block of ``language`` in the guide, dedented."""
    blocks = re.findall(rf"```{language}\n(.*?)```", GUIDE.read_text(), re.S)
    lines = blocks[number].splitlines()
    indent = min(len(line) - len(line.lstrip()) for line in lines if line.strip())
    return "\n".join(line[indent:] for line in lines) + "\n"


def entry(code: str) -> str:
    """A snippet as one entry of a list in the module (the guide shows it bare)."""
    return code.rstrip("\n") + ",\n"


def indented(text: str, spaces: int) -> str:
    return "".join(" " * spaces + line + "\n" if line else "\n" for line in text.splitlines())


def test_the_walk_through_adds_a_counter_in_hand_edits_and_one_command(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORED)
    edited = []

    catalog = copy / "exporter" / "credit_exporter" / "catalog.py"
    text = catalog.read_text()
    anchor = '    _m("credit_voice_seconds_total"'
    catalog.write_text(text.replace(anchor, indented(entry(snippet("py", 0)), 4) + anchor, 1))
    edited.append(catalog)

    config = copy / "config.example.yaml"
    text = config.read_text()
    anchor = "      - metric: credit_tool_runs_total\n"
    config.write_text(text.replace(anchor, indented(snippet("yaml", 0), 6) + anchor, 1))
    edited.append(config)

    module = copy / "dashboards" / "agent_analytics.py"
    text = module.read_text()
    anchor = '        timeseries(\n            "Unanswered questions over time",'
    assert anchor in text
    module.write_text(text.replace(anchor, indented(entry(snippet("py", 1)), 8) + anchor, 1))
    edited.append(module)
    assert len(edited) <= 7

    env = {**os.environ, "PYTHONPATH": f"{copy / 'exporter'}{os.pathsep}{copy}"}
    env.pop("CREDIT_EXPORTER_MONITORING_OVERRIDES", None)
    done = subprocess.run([sys.executable, "-m", "monitoring.generate"], cwd=copy, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "wrote docs/metrics.md" in done.stdout
    assert "credit_output_tokens_total" in (copy / "docs" / "metrics.md").read_text()
    dashboard = json.loads(
        (copy / "dashboards" / "generated" / "credit-agent-analytics.json").read_text()
    )
    panel = next(p for p in dashboard["panels"] if p["title"] == "Output tokens per day")
    assert "credit_output_tokens_total" in panel["targets"][0]["expr"]
    again = subprocess.run([sys.executable, "-m", "monitoring.generate", "--check"], cwd=copy,
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0, again.stderr

    checked = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "check-config", str(config)],
        cwd=copy, env={**env, "CREDIT_EXPORTER_DSN": "postgresql://127.0.0.1/unused"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
