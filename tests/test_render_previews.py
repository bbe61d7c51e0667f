"""dashboards/render_previews.py: the one command that renders the committed previews.
The render itself runs the native stack for minutes (docs/dashboards.md); these check
the pieces it depends on."""

from __future__ import annotations

from dashboards import render_previews

READY = """\
Backfilling the recording rules over the last 7 day(s) ...
Stack ready in 412s:
  Prometheus    http://127.0.0.1:40123
  Alertmanager  http://127.0.0.1:40124
  exporter      http://127.0.0.1:40125/metrics
  webhook       http://127.0.0.1:40126 (log: /tmp/w/logs/webhook.log)
  database      user=postgres dbname=billing host=127.0.0.1 port=40127
  Grafana is not started: no Grafana package on this machine. To use one,
"""


def test_ready_addresses_waits_for_the_ready_line() -> None:
    assert render_previews.ready_addresses(READY.split("Stack ready")[0]) is None


def test_ready_addresses_reads_the_prometheus_url_and_database_dsn() -> None:
    assert render_previews.ready_addresses(READY) == {
        "prometheus": "http://127.0.0.1:40123",
        "postgres": "user=postgres dbname=billing host=127.0.0.1 port=40127",
    }


def test_the_stack_backfills_the_whole_history_as_the_recent_tier_with_state() -> None:
    """Recording rules (and the state history) are backfilled over the recent tier
    only: for 30-day panels to have every day, the render makes the whole history
    that tier, and asks for the balance and budget history."""
    argv = render_previews.stack_argv(7, render_previews.Path("/tmp/w"), ["1", "2", "3", "4"])
    assert argv[argv.index("--days") + 1] == argv[argv.index("--backfill-recent-days") + 1]
    assert "--state-history" in argv
