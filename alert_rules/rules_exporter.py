"""The credit-exporter group: the exporter's own health and its stream reconcile."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rules_settings import seconds
from rules_templates import Links, q, selector


def grew_expr(metric: str, labels: str, window: str) -> str:
    """A counter of the exporter grew in the last ``window``, per instance and ``labels``."""
    # increase() cannot see a counter's first value: a series born with a count
    # already in it is caught by the second branch (absent `window` ago), which
    # also covers a freshly started Prometheus.
    return (
        f"sum by (job, instance, {labels}) (increase({metric}[{window}])) > 0\n"
        f"or\n"
        f"sum by (job, instance, {labels}) ({metric} unless {metric} offset {window}) > 0\n"
    )


def exporter_rules(settings: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    exporter = settings["exporter"]
    job = exporter["job"]
    health = links.dashboard("exporter_health")
    stale, dropped = exporter["data_stale"], exporter["dropped"]
    window = dropped["window"]
    iq = ("instance", "query")

    return [
        {
            "alert": "CreditExporterDown",
            "expr": f'up{{job="{job}"}} == 0\nor\nabsent(up{{job="{job}"}})\n',
            "for": exporter["down"]["for"],
            "labels": {"severity": exporter["down"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter down: {{ with $labels.instance }}{{ . }}{{ else }}"
                    "no target of job {{ $labels.job }}{{ end }}"
                ),
                "description": (
                    "{{ with $labels.instance }}Prometheus cannot scrape credit-exporter "
                    "{{ . }} (job {{ $labels.job }}){{ else }}Prometheus has no target in "
                    "job {{ $labels.job }}{{ end }}. While it lasts, budget and balance "
                    "series go stale and their alerts resolve: on-call is blind to credit "
                    "usage."
                ),
                "runbook_url": links.runbook("CreditExporterDown"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterQueryFailing",
            "expr": "credit_exporter_query_up == 0\n",
            "for": exporter["query_failing"]["for"],
            "labels": {"severity": exporter["query_failing"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter query {{ $labels.query }} failing on {{ $labels.instance }}"
                ),
                "description": (
                    "Query {{ $labels.query }} of credit-exporter {{ $labels.instance }} has "
                    "failed for at least "
                    f"{exporter['query_failing']['for']}; its metrics keep their last good "
                    "values. Errors in the last 15m by reason: "
                    '{{ range printf "sum by (reason) (increase('
                    'credit_exporter_query_errors_total{instance=%q,query=%q}[15m])) > 0" '
                    "$labels.instance $labels.query | query }}{{ .Labels.reason }}="
                    "{{ .Value | humanize }} {{ end }}(see the exporter's landing page "
                    "for the last error). Last success: "
                    + q(
                        "time() - max(credit_exporter_query_last_success_timestamp_seconds"
                        f"{selector(iq)})",
                        iq,
                        fmt="humanizeDuration",
                        missing="never",
                    )
                    + " ago."
                ),
                "runbook_url": links.runbook("CreditExporterQueryFailing"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterSourceStalled",
            # The exporter's watchdog: no run of the source completed, successfully or
            # not, for 3 of its intervals plus its timeout, while the process is scraped.
            "expr": "credit_exporter_query_stalled == 1\n",
            "for": exporter["source_stalled"]["for"],
            "labels": {"severity": exporter["source_stalled"]["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter source {{ $labels.query }} stopped polling on "
                    "{{ $labels.instance }}"
                ),
                "description": (
                    "No run of query or stream {{ $labels.query }} of credit-exporter "
                    "{{ $labels.instance }} has completed, successfully or not, for 3 of its "
                    "intervals plus its timeout, for at least "
                    f"{exporter['source_stalled']['for']}, while the exporter is up: its "
                    "values are frozen, /-/ready answers 503 and the exporter logs "
                    '"source {{ $labels.query }} stalled".'
                ),
                "runbook_url": links.runbook("CreditExporterSourceStalled"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterDataStale",
            # Value: seconds since the last successful run.
            "expr": (
                "time() - credit_exporter_query_last_success_timestamp_seconds"
                f" > {seconds(stale['after'])}\n"
            ),
            "for": stale["for"],
            "labels": {"severity": stale["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter data stale: query {{ $labels.query }} last succeeded "
                    "{{ $value | humanizeDuration }} ago"
                ),
                "description": (
                    "Query {{ $labels.query }} of credit-exporter {{ $labels.instance }} last "
                    "succeeded {{ $value | humanizeDuration }} ago (alert after "
                    f"{stale['after']}): the values it exports, and the alerts computed from "
                    "them, describe the past."
                ),
                "runbook_url": links.runbook("CreditExporterDataStale"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterSeriesDropped",
            "expr": grew_expr("credit_exporter_dropped_series_total", "metric, reason", window),
            "for": dropped["for"],
            "labels": {"severity": dropped["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter drops {{ $labels.metric }} series ({{ $labels.reason }})"
                ),
                "description": (
                    "credit-exporter {{ $labels.instance }} dropped {{ $value | humanize }} "
                    "series of {{ $labels.metric }} for reason {{ $labels.reason }} in the "
                    f"last {window}: those series are missing from /metrics (or held at "
                    "their previous value), so dashboards and alerts undercount."
                ),
                "runbook_url": links.runbook("CreditExporterSeriesDropped"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterRowsDropped",
            "expr": grew_expr("credit_exporter_dropped_rows_total", "query, reason", window),
            "for": dropped["for"],
            "labels": {"severity": dropped["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter skips rows of query {{ $labels.query }} ({{ $labels.reason }})"
                ),
                "description": (
                    "credit-exporter {{ $labels.instance }} skipped {{ $value | humanize }} "
                    "result rows of query {{ $labels.query }} for reason {{ $labels.reason }} "
                    f"in the last {window}: their values are not exported."
                ),
                "runbook_url": links.runbook("CreditExporterRowsDropped"),
                "dashboard_url": health,
            },
        },
        *reconcile_rules(exporter, links),
        *checkpoint_rules(exporter, links),
    ]


def reconcile_rules(exporter: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    """What the background reconcile of event streams finds (docs/event-engine.md):
    corrections of settled history, counters held above the database, and passes
    that no longer complete."""
    health = links.dashboard("exporter_health")
    late, held = exporter["late_data"], exporter["counters_held"]
    stale, recomputed = exporter["reconcile_stale"], exporter["stream_recomputed"]
    window = late["window"]
    down = 'if eq $labels.direction "down" }}'
    sign = f"{{{{ {down}-{{{{ else }}}}+{{{{ end }}}}"
    # Go's printf: %[n]q is the n-th argument, so each one is given once
    rows = "credit_exporter_reconcile_rows_total{instance=%[1]q,query=%[2]q,reason=%[3]q}"

    def found_rows(reason: str) -> str:
        # like the alert's own expression: a series born inside the window counts whole
        grown = f"sum(({rows} unless {rows} offset {window}) or increase({rows}[{window}]))"
        return q(grown, ["instance", "query", f'"{reason}"'], fmt='printf "%.0f"')

    excess = q("max(credit_exporter_counter_excess{instance=%q,metric=%q})", ["instance", "metric"])
    return [
        {
            "alert": "CreditExporterLateData",
            # Value: the correction in the window, in the metric's unit.
            "expr": grew_expr(
                "credit_exporter_reconcile_difference_total", "query, metric, direction", window
            ),
            "for": late["for"],
            "labels": {"severity": late["severity"]},
            "annotations": {
                "summary": (
                    "Late data in stream {{ $labels.query }}: {{ $labels.metric }} "
                    f"{sign}{{{{ $value | humanize }}}} {{{{ {down}held{{{{ else }}}}folded in"
                    "{{ end }}"
                ),
                "description": (
                    "The reconcile of stream {{ $labels.query }} on credit-exporter "
                    "{{ $labels.instance }} found settled history that differs from what its "
                    "polls had counted, and corrected {{ $labels.metric }} by "
                    f"{sign}{{{{ $value | humanize }}}} (in the metric's unit) in the last "
                    f"{window}. {{{{ {down}The decrease is held: settled rows were deleted, "
                    "lowered or moved to other labels, and a counter never goes down within a "
                    "process, so the metric's counters stay above the database's totals (by "
                    f"{excess} now) until new usage catches up.{{{{ else }}}}The increase is "
                    "folded in: the counters jumped by it when the reconcile found it, and "
                    "until then dashboards and alerts showed that much less.{{ end }} Rows the "
                    f"reconcile found in this stream in the same window: {found_rows('late')} "
                    f"committed after the stream's window, {found_rows('deleted')} deleted (a "
                    "correction with neither comes from settled rows updated). If rows commit "
                    "this late by design, raise the stream's arrives_within (streams without a "
                    "key); if rows are updated or deleted this late by design, raise its "
                    "changes_within."
                ),
                "runbook_url": links.runbook("CreditExporterLateData"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterCountersHeld",
            # Value: how far the metric's counters are above the database, summed over series.
            "expr": "credit_exporter_counter_excess > 0\n",
            "for": held["for"],
            "labels": {"severity": held["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter holds {{ $labels.metric }} {{ $value | humanize }} above "
                    "the database"
                ),
                "description": (
                    "The counters of {{ $labels.metric }} on credit-exporter "
                    "{{ $labels.instance }} have been above the database's totals for at least "
                    f"{held['for']}, by {{{{ $value | humanize }}}} now (summed over its series, "
                    "in the metric's unit): rows already counted were deleted or lowered, and "
                    "a counter never goes down within a process, so the series concerned hold "
                    "their last values and their new usage does not show. They resume when "
                    "usage catches up with the held values. A restart of the exporter would "
                    "export the database's lower totals at once: Prometheus reads that as a "
                    "counter reset, and increase() and rate() across it count those series' "
                    "whole totals again."
                ),
                "runbook_url": links.runbook("CreditExporterCountersHeld"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterReconcileStale",
            # Value: seconds since the stream's last completed reconcile pass.
            "expr": (
                "time() - credit_exporter_reconcile_last_success_timestamp_seconds"
                f" > {seconds(stale['after'])}\n"
            ),
            "for": stale["for"],
            "labels": {"severity": stale["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter stream {{ $labels.query }} not reconciled for "
                    "{{ $value | humanizeDuration }}"
                ),
                "description": (
                    "The reconcile of stream {{ $labels.query }} on credit-exporter "
                    "{{ $labels.instance }} last completed a pass {{ $value | humanizeDuration }} "
                    f"ago (alert after {stale['after']}): rows committed after the stream's "
                    "window, and settled rows updated or deleted since, are not counted. The "
                    'exporter logs "stream {{ $labels.query }}: reconcile pass failed" with the '
                    "error for every pass that fails."
                ),
                "runbook_url": links.runbook("CreditExporterReconcileStale"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterStreamRecomputed",
            # Value: how many times the stream started over in the window.
            "expr": grew_expr(
                "credit_exporter_stream_recomputes_total", "query, reason", recomputed["window"]
            ),
            "for": recomputed["for"],
            "labels": {"severity": recomputed["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter stream {{ $labels.query }} recomputed from scratch "
                    "({{ $labels.reason }})"
                ),
                "description": (
                    "Stream {{ $labels.query }} on credit-exporter {{ $labels.instance }} threw "
                    "its totals away and aggregated the whole table again in the last "
                    f"{recomputed['window']} ({{{{ $labels.reason }}}}: database_replaced means "
                    "the database under its DSN is another one, dropped and restored or "
                    "re-created; key_went_back means its highest key fell below the one already "
                    "counted, as after a restore from an older backup). Its counters now equal "
                    "the new database's totals and may have dropped: rate() and increase() "
                    "across that moment read the drop as a reset and count the new totals "
                    "again. Check that the DSN points at the right database, and read "
                    "dashboards across the restore with that in mind."
                ),
                "runbook_url": links.runbook("CreditExporterStreamRecomputed"),
                "dashboard_url": health,
            },
        },
    ]


def checkpoint_rules(exporter: Mapping[str, Any], links: Links) -> list[dict[str, Any]]:
    """A stream's checkpoint not used at a start-up, not written, or written long ago."""
    health = links.dashboard("exporter_health")
    fallback, failing = exporter["checkpoint_fallback"], exporter["checkpoint_write_failing"]
    stale = exporter["checkpoint_stale"]
    loads = 'credit_exporter_checkpoint_loads_total{result!="loaded"}'
    by = "job, instance, query, result"
    window = fallback["window"]
    return [
        {
            "alert": "CreditExporterCheckpointFallback",
            # Value: start-ups (or reloads) in the window that fell back. A restart's
            # counter starts over and may show the same 1 as the previous process's: the
            # third branch sees the restart by its configuration load.
            "expr": (
                grew_expr(loads, "query, result", window) + f"or\nsum by ({by}) ({loads}) > 0\n"
                "  and on (job, instance)\n"
                "  time() - credit_exporter_config_last_reload_success_timestamp_seconds"
                f" < {seconds(window)}\n"
            ),
            "for": fallback["for"],
            "labels": {"severity": fallback["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter stream {{ $labels.query }} started without its checkpoint "
                    "({{ $labels.result }})"
                ),
                "description": (
                    "Stream {{ $labels.query }} on credit-exporter {{ $labels.instance }} could "
                    f"not use its checkpoint at a start-up or reload in the last {window} "
                    "(missing: no file; corrupt: unreadable, torn or altered; mismatch: written "
                    "for another stream definition, database or format; verify_failed: settled "
                    "rows changed since it was written) and aggregated its whole history "
                    "instead: that start-up took as long as one without a checkpoint, and its "
                    'totals are exact. The exporter logged "stream {{ $labels.query }}: '
                    'checkpoint ... not used ({{ $labels.result }})" with the details.'
                ),
                "runbook_url": links.runbook("CreditExporterCheckpointFallback"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterCheckpointWriteFailing",
            # Value: failed writes in the window.
            "expr": (
                "sum by (job, instance, query) (increase(credit_exporter_checkpoint_writes_total"
                f'{{result="failed"}}[{failing["window"]}])) > 0\n'
            ),
            "for": failing["for"],
            "labels": {"severity": failing["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter cannot write the checkpoint of stream {{ $labels.query }}"
                ),
                "description": (
                    "credit-exporter {{ $labels.instance }} could not write the checkpoint of "
                    f"stream {{{{ $labels.query }}}} in the last {failing['window']}. Until a "
                    "write succeeds, a restart loads an older checkpoint (and reads more rows) "
                    'or, with none, aggregates the whole history. The exporter logs "stream '
                    '{{ $labels.query }}: cannot write its checkpoint" with the directory and '
                    "the error."
                ),
                "runbook_url": links.runbook("CreditExporterCheckpointWriteFailing"),
                "dashboard_url": health,
            },
        },
        {
            "alert": "CreditExporterCheckpointStale",
            # Value: seconds since the last checkpoint written (no series before the first).
            "expr": (
                "time() - credit_exporter_checkpoint_last_write_timestamp_seconds"
                f" > {seconds(stale['after'])}\n"
            ),
            "for": stale["for"],
            "labels": {"severity": stale["severity"]},
            "annotations": {
                "summary": (
                    "credit-exporter checkpoint of stream {{ $labels.query }} is "
                    "{{ $value | humanizeDuration }} old"
                ),
                "description": (
                    "The last checkpoint of stream {{ $labels.query }} on credit-exporter "
                    "{{ $labels.instance }} was written {{ $value | humanizeDuration }} ago "
                    f"(alert after {stale['after']}; it is written every checkpoint.interval). "
                    "A restart now reads every row since then, and more as it ages; with none "
                    "at all, the whole history."
                ),
                "runbook_url": links.runbook("CreditExporterCheckpointStale"),
                "dashboard_url": health,
            },
        },
    ]
