"""Exporter health: is credit-exporter itself working?

Process up and build, configuration reloads, per-query status, last success
age, durations, errors by reason, rows, dropped rows and series, the size of
what Prometheus scrapes, and what the reconcile of event streams finds (late
data, counters held above the database, pass age, database share).
"""

from __future__ import annotations

from dashboards.common import (
    BYTES,
    COUNT,
    DURATION,
    NONE,
    PERCENT,
    SECONDS,
    UID_HEALTH,
    UP_DOWN,
    bargauge,
    dashboard,
    prom,
    prometheus_variable,
    query_variable,
    row,
    stat,
    steps,
    table,
    table_columns,
    timeseries,
    value_map,
)

UID = UID_HEALTH
TITLE = "credit-exporter health"
J = 'job=~"$job", instance=~"$instance"'
UP_MAP = value_map({"1": ("Up", "green"), "0": ("Down", "red")})
AGE_STEPS = steps(("green", None), ("yellow", 300), ("red", 900))
# a pass every reconcile.interval (1h by default); the alert fires after 6h
RECONCILE_AGE_STEPS = steps(("green", None), ("yellow", 7200), ("red", 21600))


def zero_if_none(expr: str, label: str, text: str = "none") -> str:
    """A counter the exporter creates on its first drop, or a query that keeps only
    non-zero series: read "none" as one 0 series named ``text`` in ``label``."""
    return f'{expr} or on () label_replace(vector(0), "{label}", "{text}", "", "")'


def variables() -> list[dict]:
    return [
        prometheus_variable(),
        query_variable(
            "job", "Job", "label_values(credit_build_info, job)", multi=True,
            include_all=True,  # All: these jobs, not every target of the Prometheus
            description="Prometheus job(s) scraping credit-exporter.",
        ),
        query_variable(
            "instance", "Instance", 'label_values(credit_build_info{job=~"$job"}, instance)',
            multi=True, include_all=True, all_value=".*",
            description="Exporter instance(s) (replicas or shards).",
        ),
    ]  # fmt: skip


def items() -> list:
    return [
        row("Process"),
        stat(
            "Exporter up",
            "Whether Prometheus could scrape each exporter instance (the scrape's up series).",
            [prom(f"up{{{J}}}", "{{instance}}")],
            NONE, mappings=UP_MAP, thresholds=UP_DOWN, color_mode="background", width=4,
            seeds="health: up",
        ),
        table(
            "Build info",
            "Version, revision and Python version of each running exporter.",
            [prom(f"credit_build_info{{{J}}}")],
            NONE,
            transformations=table_columns(
                {"instance": "Instance", "version": "Version", "revision": "Revision",
                 "python_version": "Python"}, hide=("__name__", "job", "Value")),
            width=8, height=4, seeds="health: build info",
        ),
        stat(
            "Config reload",
            "Whether the last configuration load (start, SIGHUP or /-/reload) succeeded; a "
            "failed reload keeps the previous configuration running.",
            [prom(f"min(credit_exporter_config_last_reload_successful{{{J}}})", "last reload")],
            NONE, mappings=value_map({"1": ("OK", "green"), "0": ("Failed", "red")}),
            thresholds=UP_DOWN, color_mode="background", width=4, seeds="health: reload",
        ),
        stat(
            "Time since last config load",
            "Age of the configuration in use (last successful load).",
            [prom("time() - max(credit_exporter_config_last_reload_success_timestamp_seconds"
                  f"{{{J}}})", "config age")],
            DURATION, width=4, seeds="health: reload",
        ),
        stat(
            "Dropped in range",
            "Result rows skipped and series not exported in the range (0 when nothing was "
            "ever dropped).",
            [prom(f"sum(increase(credit_exporter_dropped_rows_total{{{J}}}[$__range])) "
                  "or vector(0)", "rows"),
             prom(f"sum(increase(credit_exporter_dropped_series_total{{{J}}}[$__range])) "
                  "or vector(0)", "series")],
            COUNT, text_mode="value_and_name", decimals=0,
            thresholds=steps(("green", None), ("yellow", 1)), width=4,
            seeds="health: dropped rows and series",
        ),
        row("Scrape size"),
        stat(
            "Exposition size",
            "Size of the /metrics body each instance renders once per poll (uncompressed).",
            [prom(f"sum(credit_exporter_exposition_bytes{{{J}}})", "bytes")],
            BYTES, width=6, seeds="health: scrape size",
        ),
        stat(
            "Exported series",
            "Series in the last rendered /metrics body.",
            [prom(f"sum(credit_exporter_exposition_series{{{J}}})", "series")],
            COUNT, width=6, seeds="health: scrape size",
        ),
        stat(
            "Scrape duration",
            "How long Prometheus took to scrape the slowest instance.",
            [prom(f"max(scrape_duration_seconds{{{J}}})", "scrape")],
            SECONDS, thresholds=steps(("green", None), ("yellow", 1), ("red", 5)), width=6,
            seeds="health: scrape size",
        ),
        stat(
            "Samples per scrape",
            "Samples Prometheus ingested from the last scrape of all instances.",
            [prom(f"sum(scrape_samples_scraped{{{J}}})", "samples")],
            COUNT, width=6, seeds="health: scrape size",
        ),
        row("Queries"),
        stat(
            "Query status",
            "Whether each state query and event stream succeeded on its last run. A failing "
            "query keeps its last good series; the others are unaffected.",
            [prom(f"min by (query) (credit_exporter_query_up{{{J}}})", "{{query}}")],
            NONE, mappings=UP_MAP, thresholds=UP_DOWN, color_mode="background",
            text_mode="value_and_name", width=24, height=5, seeds="health: per-query up",
        ),
        bargauge(
            "Time since last success by query",
            "Age of each query's last successful run. Yellow after 5 minutes, red after 15.",
            [prom("sort_desc(time() - max by (query) ("
                  f"credit_exporter_query_last_success_timestamp_seconds{{{J}}}))",
                  "{{query}}")],
            SECONDS, thresholds=AGE_STEPS, width=8, height=10,
            seeds="health: last success age",
        ),
        timeseries(
            "Query duration (p95)",
            "95th percentile wall time of each query run, database round trip included.",
            [prom("histogram_quantile(0.95, sum by (query, le) (rate("
                  f"credit_exporter_query_duration_seconds_bucket{{{J}}}[$__rate_interval])))",
                  "{{query}}")],
            SECONDS, width=8, height=10, seeds="health: durations",
        ),
        bargauge(
            "Rows returned by query",
            "Rows each query returned on its last successful run.",
            [prom(f"sort_desc(max by (query) (credit_exporter_query_rows{{{J}}}))",
                  "{{query}}")],
            COUNT, width=8, height=10, seeds="health: rows",
        ),
        timeseries(
            "Query errors by reason",
            "Failed query runs per interval, by reason (timeout, connection, sql, "
            "validation).",
            [prom("sum by (reason) (increase(credit_exporter_query_errors_total"
                  f"{{{J}}}[$__interval]))", "{{reason}}")],
            COUNT, bars=True, stacked=True, width=12, seeds="health: errors by reason",
        ),
        timeseries(
            "Dropped rows and series",
            "Rows skipped (NULL or non-numeric values, long labels, duplicates) and series "
            "not exported (series limit, long label values, counter decreases) per interval.",
            [prom(zero_if_none("sum by (query, reason) (increase("
                               f"credit_exporter_dropped_rows_total{{{J}}}[$__interval]))",
                               "reason"), "rows {{query}} {{reason}}"),
             prom(zero_if_none("sum by (metric, reason) (increase("
                               f"credit_exporter_dropped_series_total{{{J}}}[$__interval]))",
                               "reason"), "series {{metric}} {{reason}}")],
            COUNT, bars=True, stacked=True, width=12,
            seeds="health: dropped rows and series",
        ),
        bargauge(
            "Series by metric",
            "The 15 metrics with the most exported series (cardinality watch).",
            [prom(f"topk(15, max by (metric) (credit_exporter_exposition_series{{{J}}}))",
                  "{{metric}}")],
            COUNT, width=24, height=10, seeds="health: scrape size",
        ),
        *reconcile_items(),
    ]  # fmt: skip


def reconcile_items() -> list:
    """What the background reconcile of event streams finds and costs."""
    return [
        row("Late data and reconcile"),
        bargauge(
            "Reconcile corrections in range",
            "What the reconcile of settled history corrected in the range, by stream, metric "
            "and direction, in each metric's unit: up is folded into the counters (they "
            "jumped by it when it was found), down is held (the counters stay above the "
            "database). Read by increase(), which extrapolates slightly; the exporter's log "
            "has the exact figures.",
            [prom(zero_if_none("sort_desc(sum by (query, metric, direction) (increase("
                               f"credit_exporter_reconcile_difference_total{{{J}}}[$__range]))"
                               " > 0)", "query", "no corrections"),
                  "{{query}} {{metric}} {{direction}}")],
            COUNT, width=8, height=8, seeds="health: late data and reconcile",
        ),
        bargauge(
            "Late and deleted rows in range",
            "Rows the reconcile found in settled history in the range, by stream: late "
            "(committed after the stream's window: raise arrives_within if that is by "
            "design) and deleted (counted, then removed).",
            [prom(zero_if_none("sort_desc(sum by (query, reason) (increase("
                               f"credit_exporter_reconcile_rows_total{{{J}}}[$__range])) > 0)",
                               "query", "none"), "{{query}} {{reason}}")],
            COUNT, decimals=0, width=8, height=8, seeds="health: late data and reconcile",
        ),
        timeseries(
            "Held above the database",
            "How far each stream metric's counters are above the database's totals, in the "
            "metric's unit, because decreases are held (a counter never goes down within a "
            "process). It falls as new usage catches up; 0 (nothing held) normally.",
            [prom(zero_if_none(f"max by (metric) (credit_exporter_counter_excess{{{J}}}) > 0",
                               "metric", "nothing held"), "{{metric}}")],
            COUNT, width=8, height=8, seeds="health: late data and reconcile",
        ),
        bargauge(
            "Time since last reconcile by stream",
            "Age of each stream's last completed reconcile pass (on the stalest instance; the "
            "start-up counts as one). Passes start every reconcile.interval, 1h by default: "
            "yellow after 2 hours, red after 6, when CreditExporterReconcileStale fires.",
            [prom("sort_desc(time() - min by (query) ("
                  f"credit_exporter_reconcile_last_success_timestamp_seconds{{{J}}}))",
                  "{{query}}")],
            SECONDS, thresholds=RECONCILE_AGE_STEPS, width=12, height=8,
            seeds="health: late data and reconcile",
        ),
        timeseries(
            "Reconcile database share",
            "Database time of each stream's reconcile queries as a percentage of one "
            "database core. While a pass runs it stays under the stream's "
            "reconcile.max_db_share (1% by default); between passes it is 0.",
            [prom("100 * sum by (query) (rate("
                  f"credit_exporter_reconcile_database_seconds_total{{{J}}}[$__rate_interval]))",
                  "{{query}}")],
            PERCENT, width=12, height=8, seeds="health: late data and reconcile",
        ),
    ]  # fmt: skip


def build() -> dict:
    return dashboard(
        uid=UID,
        title=TITLE,
        description="Is the exporter healthy: scrapes, configuration reloads, per-query "
        "status, durations, errors, rows, drops, scrape size, and late data found by the "
        "reconcile of event streams.",
        items=items(),
        variables=variables(),
        time_from="now-6h",
        refresh="1m",
    )
