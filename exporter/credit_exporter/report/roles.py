"""Which configured SQL and which columns the report reads, found through the metric mappings.

Every metric of the catalogue is fed by at most one query or stream, so "the
stream that feeds credit_spent_credits_total" names exactly one SQL; the
mapping's ``value`` and ``labels`` say which of its columns hold the credits,
the model, the user and so on. The report therefore works on any schema the
exporter works on, without SQL of its own about the billing tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from credit_exporter.config import Config, MetricMapping, QueryConfig, StreamConfig
from credit_exporter.report.period import ReportInputError

MODEL = "gen_ai_request_model"


def _stream_feeding(config: Config, metric: str) -> tuple[str, StreamConfig, MetricMapping] | None:
    for name, stream in config.streams.items():
        for mapping in stream.metrics:
            if mapping.metric == metric:
                return name, stream, mapping
    return None


def _query_feeding(config: Config, metric: str) -> tuple[QueryConfig, MetricMapping] | None:
    for query in config.queries.values():
        for mapping in query.metrics:
            if mapping.metric == metric:
                return query, mapping
    return None


@dataclass(frozen=True)
class UsageRoles:
    """The usage stream: one row per request, with these columns."""

    stream: str
    sql: str
    time: str
    organization: str
    model: str
    task_category: str
    service_type: str | None  # None: the stream has no service type; all rows are one kind
    user: str
    pool: str
    outcome: str
    spent: str
    prompts: str | None  # None: every row is one prompt
    refunded: str | None
    latency: str | None


@dataclass(frozen=True)
class RatingRoles:
    sql: str
    time: str
    organization: str
    model: str
    rating: str
    count: str | None  # None: every row is one rating


@dataclass(frozen=True)
class StateRoles:
    """State queries (current values, not of the report period); each is optional."""

    multipliers: tuple[str, str, str, str] | None  # sql, model, tier, multiplier
    balances: tuple[str, str, str, str] | None  # sql, organization, pool, balance
    budgets: tuple[str, dict[str, str], str, str] | None  # sql, labels, used, limit
    periods: tuple[str, str, str, str] | None  # sql, organization, start, end


_USAGE_METRICS = (
    "credit_spent_credits_total",
    "credit_spent_by_model_credits_total",
    "credit_spent_by_user_credits_total",
    "credit_spent_by_pool_credits_total",
    "credit_model_requests_total",
)


def usage_roles(config: Config) -> UsageRoles:
    """Column roles of the usage stream; raises ReportInputError naming what is missing."""
    found = {}
    for metric in _USAGE_METRICS:
        feeding = _stream_feeding(config, metric)
        if feeding is None:
            raise ReportInputError(
                f"streams: no stream feeds {metric}; the report needs it (docs/report.md)"
            )
        found[metric] = feeding
    name, stream, spent = found["credit_spent_credits_total"]
    if others := sorted({f[0] for f in found.values()} - {name}):
        raise ReportInputError(
            f"streams.{name}: the report needs {', '.join(_USAGE_METRICS)} from one stream; "
            f"some are fed by {', '.join(others)}"
        )
    if spent.value is None:
        raise ReportInputError(
            f"streams.{name}: credit_spent_credits_total has no value column to sum"
        )
    by_model = found["credit_spent_by_model_credits_total"][2]
    requests = found["credit_model_requests_total"][2]
    refunded = _stream_feeding(config, "credit_refunded_credits_total")
    latency = _stream_feeding(config, "credit_response_duration_seconds")
    return UsageRoles(
        stream=name,
        sql=stream.sql,
        time=stream.time,
        organization=spent.labels["organization"],
        model=by_model.labels[MODEL],
        task_category=by_model.labels["task_category"],
        service_type=spent.labels.get("service_type"),
        user=found["credit_spent_by_user_credits_total"][2].labels["user"],
        pool=found["credit_spent_by_pool_credits_total"][2].labels["pool"],
        outcome=requests.labels["outcome"],
        spent=spent.value,
        prompts=requests.value,
        refunded=refunded[2].value if refunded and refunded[0] == name else None,
        latency=latency[2].value if latency and latency[0] == name else None,
    )


def rating_roles(config: Config) -> RatingRoles | None:
    feeding = _stream_feeding(config, "credit_ratings_total")
    if feeding is None:
        return None
    _, stream, mapping = feeding
    return RatingRoles(
        sql=stream.sql,
        time=stream.time,
        organization=mapping.labels["organization"],
        model=mapping.labels[MODEL],
        rating=mapping.labels["rating"],
        count=mapping.value,
    )


def state_roles(config: Config) -> StateRoles:
    multipliers = _query_feeding(config, "credit_model_multiplier_ratio")
    balances = _query_feeding(config, "credit_balance_credits")
    used = _query_feeding(config, "credit_budget_used_credits")
    limit = _query_feeding(config, "credit_budget_limit_credits")
    start = _query_feeding(config, "credit_billing_period_start_timestamp_seconds")
    end = _query_feeding(config, "credit_billing_period_end_timestamp_seconds")
    budgets = None
    if used and limit and used[0] is limit[0]:
        assert used[1].value is not None and limit[1].value is not None
        budgets = (used[0].sql, used[1].labels, used[1].value, limit[1].value)
    periods = None
    if start and end and start[0] is end[0]:
        assert start[1].value is not None and end[1].value is not None
        periods = (start[0].sql, start[1].labels["organization"], start[1].value, end[1].value)
    return StateRoles(
        multipliers=(
            (multipliers[0].sql, multipliers[1].labels[MODEL], multipliers[1].labels["tier"],
             multipliers[1].value or "")
            if multipliers else None
        ),
        balances=(
            (balances[0].sql, balances[1].labels["organization"], balances[1].labels["pool"],
             balances[1].value or "")
            if balances else None
        ),
        budgets=budgets,
        periods=periods,
    )  # fmt: skip
