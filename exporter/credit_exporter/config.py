"""The YAML configuration: its model, and its validation against the catalogue.

Every problem is reported as ``key.path: problem`` so a user can find it in
their file; ``load_config`` raises ``ConfigError`` carrying all of them.
Secrets (DSNs) are resolved only when a connection is made, never stored in an
error message, and never rendered by ``repr``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from credit_exporter import catalog, redact
from credit_exporter import limits as caps

_DURATION_PART = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
_UNCLEAR_KEY = re.compile(r"^$|^[\s:]|: |\s$")


def parse_duration(value: object) -> float:
    """Parse a Prometheus-style duration (``500ms``, ``30s``, ``1h30m``) into seconds."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be a duration like 30s, 5m or 1h30m, got {value!r}")
    if isinstance(value, int | float):
        raise ValueError(f"must be a duration with a unit (e.g. {value}s), got a bare number")
    text = value.strip()
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"must be a duration like 30s, 5m or 1h30m, got {value!r}")
    if total <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return total


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Strict):
    """Where and how to connect. Exactly one of dsn, dsn_env, dsn_file."""

    dsn: str | None = Field(default=None, repr=False)
    dsn_env: str | None = None
    dsn_file: Path | None = None
    statement_timeout: Duration = 10.0
    connect_timeout: Duration = 5.0
    pool_size: int = Field(default=4, ge=1, le=64)
    application_name: str = "credit-exporter"

    @field_validator("dsn")
    @classmethod
    def _dsn_parses(cls, value: str | None) -> str | None:
        return None if value is None else redact.checked_dsn(value)

    @model_validator(mode="after")
    def _exactly_one_dsn_source(self) -> DatabaseConfig:
        given = [k for k in ("dsn", "dsn_env", "dsn_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of dsn, dsn_env, dsn_file"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    def resolve_dsn(self) -> str:
        """Return the connection string; raises ConfigError without revealing it."""
        if self.dsn is not None:
            return self.dsn
        if self.dsn_env is not None:
            key, value = "dsn_env", os.environ.get(self.dsn_env)
            if not value:
                raise ConfigError([f"dsn_env: environment variable {self.dsn_env} is not set"])
        else:
            assert self.dsn_file is not None
            try:
                key, value = "dsn_file", self.dsn_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problem = f"dsn_file: cannot read {self.dsn_file}: {exc.strerror}"
                raise ConfigError([problem]) from None
        try:
            return redact.checked_dsn(value)
        except ValueError as exc:
            raise ConfigError([f"{key}: {exc}"]) from None


class LimitsConfig(_Strict):
    """Caps on what one metric may export (docs/limits.md)."""

    max_series_per_metric: int = Field(default=caps.DEFAULT_MAX_SERIES, ge=1, le=10_000_000)
    max_label_value_length: int = Field(
        default=caps.DEFAULT_MAX_LABEL_VALUE_LENGTH, ge=caps.HASH_HEX_DIGITS, le=65_536
    )


class MappingLimits(_Strict):
    """A mapping's own caps; unset keys take the top-level ``limits``."""

    max_series_per_metric: int | None = Field(default=None, ge=1, le=10_000_000)
    max_label_value_length: int | None = Field(default=None, ge=caps.HASH_HEX_DIGITS, le=65_536)


class PrivacyConfig(_Strict):
    """Where the HMAC key for ``hash_labels`` comes from: exactly one of env, file."""

    hmac_key_env: str | None = None
    hmac_key_file: Path | None = None

    @model_validator(mode="after")
    def _exactly_one_key_source(self) -> PrivacyConfig:
        if (self.hmac_key_env is None) == (self.hmac_key_file is None):
            raise ValueError("give exactly one of hmac_key_env, hmac_key_file")
        return self

    def resolve_key(self) -> bytes:
        """The key's bytes; ConfigError naming the key (never showing it) if unusable."""
        if self.hmac_key_env is not None:
            where = "privacy.hmac_key_env"
            value = os.environ.get(self.hmac_key_env)
            if not value:
                raise ConfigError([f"{where}: environment variable {self.hmac_key_env} is not set"])
            key = value.encode("utf-8", errors="surrogateescape")
        else:
            assert self.hmac_key_file is not None
            where = "privacy.hmac_key_file"
            try:
                key = self.hmac_key_file.read_bytes().strip()
            except (OSError, ValueError) as exc:
                reason = getattr(exc, "strerror", None) or "invalid path"
                raise ConfigError(
                    [f"{where}: cannot read {self.hmac_key_file}: {reason}"]
                ) from None
        if len(key) < caps.MIN_HMAC_KEY_BYTES:
            raise ConfigError(
                [f"{where}: the key must be at least {caps.MIN_HMAC_KEY_BYTES} bytes long"]
            )
        return key


class NullableLabel(_Strict):
    """A label entry ``{column, if_null}``: its column, and the text exported for a NULL."""

    column: str
    if_null: str

    @field_validator("column", "if_null", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        # YAML reads `if_null: 0` or `if_null: ~` as a number or None: say so plainly
        if not isinstance(value, str):
            raise ValueError("must be a string")
        return value


def _label_column(entry: object) -> object:
    """The column of a label entry, a name or ``{column, if_null}`` (whose
    replacement ``MetricMapping`` keeps apart, so ``labels`` stays label -> column)."""
    if isinstance(entry, Mapping):
        return NullableLabel.model_validate(entry).column
    if not isinstance(entry, str):
        raise ValueError("give a column name or {column, if_null}")
    return entry


LabelColumn = Annotated[str, BeforeValidator(_label_column)]


def _null_replacements(data: object) -> dict[str, str]:
    """label -> if_null of the ``{column, if_null}`` entries of an already valid mapping."""
    labels = data.get("labels") if isinstance(data, Mapping) else None
    if not isinstance(labels, Mapping):
        return {}  # the list form: column names only
    return {
        label: entry["if_null"] for label, entry in labels.items() if isinstance(entry, Mapping)
    }


class MetricMapping(_Strict):
    """How one metric is read from a query's rows."""

    metric: str
    value: str | None = None
    # several value columns as the values of one label: {label: {label value: column}}
    values: dict[str, dict[str, str]] | None = None
    labels: dict[str, LabelColumn] = Field(default_factory=dict)
    limits: MappingLimits | None = None
    # catalogue label names whose values are exported as a keyed HMAC
    hash_labels: list[str] = Field(default_factory=list)
    # catalogue label names exported empty, summed over (streams only)
    drop_labels: list[str] = Field(default_factory=list)
    _if_null: dict[str, str] = PrivateAttr(default_factory=dict)
    _policy: caps.LabelPolicy | None = PrivateAttr(default=None)

    @property
    def policy(self) -> caps.LabelPolicy:
        """Caps, hashing, dropping and NULL replacements as resolved by ``parse_config``."""
        return self._policy or caps.DEFAULT_POLICY

    @property
    def if_null(self) -> dict[str, str]:
        """label -> the text its NULL cells export (labels given as ``{column, if_null}``)."""
        return dict(self._if_null)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_null_replacements(
        cls, data: Any, handler: ModelWrapValidatorHandler[MetricMapping]
    ) -> MetricMapping:
        mapping = handler(data)
        if isinstance(data, Mapping):
            mapping._if_null = _null_replacements(data)
        return mapping

    @property
    def value_label(self) -> str | None:
        """The label whose values ``values`` spreads the value columns over, if any."""
        return next(iter(self.values)) if self.values else None

    @property
    def value_columns(self) -> dict[str, str]:
        """Label value -> column for ``values``; ``{}`` without it."""
        return next(iter(self.values.values())) if self.values else {}

    @property
    def read_columns(self) -> list[str]:
        """Every column this mapping reads from a row: labels, value, values."""
        columns = [c for label, c in self.labels.items() if label not in self.drop_labels]
        return [*columns, *([self.value] if self.value else []), *self.value_columns.values()]

    @field_validator("values")
    @classmethod
    def _one_label_with_columns(
        cls, value: dict[str, dict[str, str]] | None
    ) -> dict[str, dict[str, str]] | None:
        if value is None:
            return None
        if len(value) != 1:
            raise ValueError(
                "name exactly one label, e.g. {gen_ai_token_type: {input: prompt_tokens,"
                " output: completion_tokens}}"
            )
        columns = next(iter(value.values()))
        if not columns:
            raise ValueError("give at least one label value and its column")
        if any(not text for text in columns):
            raise ValueError("a label value cannot be empty")
        if len(set(columns.values())) != len(columns):
            raise ValueError("two label values read the same column")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _list_means_same_name(cls, value: Any) -> Any:
        if isinstance(value, list):
            if not all(isinstance(item, str) for item in value):
                raise ValueError("a list of labels must hold column names (strings)")
            if len(set(value)) != len(value):
                raise ValueError("a label is listed twice")
            return {item: item for item in value}
        return value


def _check_timeout_within_interval(timeout: float, interval: float) -> None:
    if timeout > interval:
        raise ValueError(f"timeout ({timeout:g}s) must not exceed interval ({interval:g}s)")


class QueryConfig(_Strict):
    """A state query: its rows become gauge series, replaced on every poll."""

    database: str
    sql: str = Field(min_length=1)
    interval: Duration = 30.0
    timeout: Duration = 10.0
    metrics: list[MetricMapping] = Field(min_length=1)

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> QueryConfig:
        _check_timeout_within_interval(self.timeout, self.interval)
        return self


class ReconcileConfig(_Strict):
    """The background comparison of settled history with the database (docs/event-engine.md)."""

    # a pass starts this long after the previous one started
    interval: Duration = 3600.0
    # every pass compares the settled history younger than this (where late rows land) ...
    recent: Duration = 86400.0
    # ... and a slice of the older history, so that all of it is compared this often
    full_every: Duration = 604800.0
    # width of the time chunks whose row counts and sums are compared
    chunk: Duration = 3600.0
    # database time of the reconcile's queries, as a share of wall time while a pass runs
    max_db_share: float = Field(default=0.01, gt=0, le=1)

    @model_validator(mode="after")
    def _full_cycle_spans_passes(self) -> ReconcileConfig:
        if self.full_every < self.interval:
            raise ValueError(
                f"full_every ({self.full_every:g}s) must not be shorter than interval"
                f" ({self.interval:g}s): each pass compares at most the whole history"
            )
        return self


class StreamConfig(_Strict):
    """A usage event stream: its rows feed exact, absolute counters and histograms.

    ``sql`` returns one row per event with the ``time`` column, the optional
    ``key`` column, the label columns and the value columns; the engine wraps
    it (see docs/event-engine.md), so it must be a plain SELECT without ORDER
    BY or LIMIT. ``key`` is the insertion-order column (an integer fed by a
    sequence): with it, rows committed long after their time are still counted.
    Without it the engine orders rows by ``time`` and waits ``arrives_within``
    before settling them. ``changes_within`` declares how long after its time a
    row's values may still change (a row inserted first and completed by an
    UPDATE); rows that young are re-aggregated on every poll.
    """

    database: str
    sql: str = Field(min_length=1)
    time: str = Field(min_length=1)
    key: str | None = None
    # how naive time columns (timestamp, date) are read; epoch-number time columns' unit
    time_zone: str = "UTC"
    epoch_unit: Literal["s", "ms", "us"] = "s"
    # a row commits at most this long after its time (streams ordered by time; default: settle)
    arrives_within: Duration | None = None
    # a row's values may change for this long after its time (default: never after insert)
    changes_within: Duration | None = None
    interval: Duration = 15.0
    timeout: Duration = 15.0
    startup_timeout: Duration = 600.0
    settle: Duration = 120.0
    # PostgreSQL memory size for the start-up aggregate's sorts (SET LOCAL work_mem)
    startup_work_mem: str = Field(default="64MB", pattern=r"^\d+\s*(kB|MB|GB)$")
    reconcile: ReconcileConfig | Literal[False] = Field(default_factory=ReconcileConfig)
    metrics: list[MetricMapping] = Field(min_length=1)

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as UTC or Europe/Berlin)"
            ) from None
        return value

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> StreamConfig:
        _check_timeout_within_interval(self.timeout, self.interval)
        return self

    @model_validator(mode="after")
    def _arrival_needs_time_order(self) -> StreamConfig:
        if self.key is not None and self.arrives_within is not None:
            raise ValueError(
                "arrives_within: a stream with a key counts every row when it commits, whatever"
                " its time; arrives_within is for streams ordered by time (remove one of them)"
            )
        return self

    @property
    def by_time(self) -> bool:
        """Whether rows settle by their time (no key, or values that change after insert)."""
        return self.key is None or self.changes_within is not None

    @property
    def window(self) -> float:
        """How far behind now() the time horizon trails: rows younger than this are live."""
        if self.key is not None:
            return self.changes_within or 0.0
        arrival = self.settle if self.arrives_within is None else self.arrives_within
        return max(arrival, self.changes_within or 0.0)


class ReportConfig(_Strict):
    """Settings of ``credit-exporter report`` the metric mappings cannot give (docs/report.md).

    Column roles come from the streams' metric mappings; this section names the
    values that carry a meaning (which pool is the plan grant, which outcome is
    a success) and the thresholds of the recommendations.
    """

    plan_pool: str = Field(default="plan", min_length=1)
    success_outcome: str = Field(default="success", min_length=1)
    # recommendations: minimum data and what "comparable" means
    min_prompts: int = Field(default=30, ge=1)
    min_ratings: int = Field(default=20, ge=1)
    max_success_rate_drop: float = Field(default=0.01, ge=0, le=1)
    max_rating_drop: float = Field(default=0.2, ge=0, le=4)
    min_saving_credits: float = Field(default=1.0, ge=0)
    # off-peak advice: weekday hours [peak_start_hour, peak_end_hour) UTC
    peak_start_hour: int = Field(default=9, ge=0, le=23)
    peak_end_hour: int = Field(default=17, ge=1, le=24)
    min_latency_increase: float = Field(default=0.2, ge=0)
    # Runs out of budgets and pools: the Prometheus that evaluates alert_rules/
    # (its recorded time to exhaustion); --prometheus overrides it
    prometheus: str | None = Field(default=None, pattern=r"^https?://[^/\s]+")

    @model_validator(mode="after")
    def _peak_hours_ordered(self) -> ReportConfig:
        if self.peak_end_hour <= self.peak_start_hour:
            raise ValueError("peak_end_hour must be after peak_start_hour")
        return self


class CheckpointConfig(_Strict):
    """Where streams keep their settled state between runs (docs/event-engine.md, Checkpoint)."""

    # a directory the exporter may write: one file per stream, replaced atomically
    directory: str
    # how often each stream's checkpoint is written (and once more at a clean shutdown)
    interval: Duration = 300.0

    @field_validator("directory")
    @classmethod
    def _a_path(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be the path of a directory the exporter can write")
        return value

    @property
    def path(self) -> Path:
        return Path(self.directory)


class Config(_Strict):
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    privacy: PrivacyConfig | None = None
    databases: dict[Annotated[str, Field(pattern=NAME_PATTERN)], DatabaseConfig] = Field(
        min_length=1
    )
    queries: dict[Annotated[str, Field(pattern=NAME_PATTERN)], QueryConfig] = Field(
        default_factory=dict
    )
    streams: dict[Annotated[str, Field(pattern=NAME_PATTERN)], StreamConfig] = Field(
        default_factory=dict
    )
    report: ReportConfig = Field(default_factory=ReportConfig)
    checkpoint: CheckpointConfig | None = None

    @model_validator(mode="after")
    def _names_unique_across_queries_and_streams(self) -> Config:
        if both := sorted(set(self.queries) & set(self.streams)):
            raise ValueError(f"{', '.join(both)}: a query and a stream share a name")
        return self


class ConfigError(Exception):
    """A configuration that cannot be used; ``problems`` are ``key.path: problem`` lines."""

    def __init__(self, problems: list[str]) -> None:
        # one line each, whatever a key or value in the message holds
        self.problems = [p.replace("\r", "\\r").replace("\n", "\\n") for p in problems]
        super().__init__("\n".join(self.problems))


def _format_location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # a key that would blur "path: problem" (":", a newline, "") is quoted
            text = repr(item) if _UNCLEAR_KEY.search(item) or not item.isprintable() else item
            parts.append(("." if parts else "") + text)
    return "".join(parts) or "(top level)"


def _pydantic_problems(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors():
        # pydantic appends "[key]" for dict keys that fail their pattern
        loc = tuple(p for p in item["loc"] if p != "[key]")
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key"
        elif item["type"] == "string_pattern_mismatch":
            message = "names must match [a-z][a-z0-9_]*"
        message = message.removeprefix("Value error, ")
        problems.append(f"{_format_location(loc)}: {message}")
    return problems


def _known_mappings(
    where: str,
    database: str,
    mappings: list[MetricMapping],
    config: Config,
    fed_by: dict[str, str],
    problems: list[str],
    wrong_source: Callable[[catalog.Metric], str | None],
    feeders: str,
) -> Iterator[tuple[str, catalog.Metric, MetricMapping]]:
    """Check what queries and streams share (database, metric name, source,
    duplicate feeds) and yield the mappings worth checking further."""
    if database not in config.databases:
        known = ", ".join(sorted(config.databases))
        problems.append(f"{where}.database: unknown database {database!r} ({known})")
    for index, mapping in enumerate(mappings):
        at = f"{where}.metrics[{index}]"
        metric = catalog.BY_NAME.get(mapping.metric)
        if metric is None:
            problems.append(f"{at}.metric: unknown metric {mapping.metric!r}")
            continue
        if (problem := wrong_source(metric)) is not None:
            problems.append(f"{at}.metric: {metric.name} is {problem}")
            continue
        if mapping.metric in fed_by:
            problems.append(
                f"{at}.metric: {metric.name} is already fed by {fed_by[mapping.metric]}"
                f" (two {feeders} would produce duplicate series)"
            )
        fed_by.setdefault(mapping.metric, where)
        problems += _label_problems(at, metric, mapping)
        yield at, metric, mapping


def _not_state(metric: catalog.Metric) -> str | None:
    if metric.source is catalog.Source.STATE:
        return None
    kind = (
        "the exporter's own metric"
        if metric.source is catalog.Source.EXPORTER
        else f"a {metric.type.value} fed by usage event streams"
    )
    return f"{kind}; a state query can only feed gauges"


def _not_events(metric: catalog.Metric) -> str | None:
    if metric.source is catalog.Source.EVENTS:
        return None
    return (
        f"a {metric.type.value} of source {metric.source.value}; "
        "a stream can only feed counters and histograms"
    )


def _catalogue_problems(config: Config) -> list[str]:
    """What pydantic cannot know: references, the catalogue, duplicate series."""
    problems: list[str] = []
    fed_by: dict[str, str] = {}
    for qname, query in config.queries.items():
        for at, metric, mapping in _known_mappings(
            f"queries.{qname}", query.database, query.metrics, config, fed_by, problems,
            _not_state, "queries",
        ):  # fmt: skip
            columns = list(mapping.labels.values())
            if mapping.drop_labels:
                problems.append(
                    f"{at}.drop_labels: only streams can drop a label (their counters are"
                    " summed over it); a state query must aggregate in its SQL instead"
                )
            if metric.type is catalog.MetricType.INFO:
                if mapping.value is not None or mapping.values is not None:
                    problems.append(f"{at}.value: {metric.name} is an _info metric, always 1")
            elif mapping.value is None and mapping.values is None:
                problems.append(f"{at}.value: required (the column holding the sample value)")
            elif mapping.value in columns:
                problems.append(f"{at}.value: column {mapping.value!r} is also used as a label")
    for sname, stream in config.streams.items():
        for at, metric, mapping in _known_mappings(
            f"streams.{sname}", stream.database, stream.metrics, config, fed_by, problems,
            _not_events, "sources",
        ):  # fmt: skip
            columns = list(mapping.labels.values())
            if stream.time in columns:
                problems.append(f"{at}.labels: the time column {stream.time!r} cannot be a label")
            if stream.key is not None and stream.key in columns:
                problems.append(f"{at}.labels: the key column {stream.key!r} cannot be a label")
            if metric.type is catalog.MetricType.HISTOGRAM and mapping.values is not None:
                problems.append(f"{at}.values: a histogram observes one column (give value)")
            elif metric.type is catalog.MetricType.HISTOGRAM and mapping.value is None:
                problems.append(f"{at}.value: required (the column observed by the histogram)")
            elif mapping.value is not None and mapping.value in columns:
                problems.append(f"{at}.value: column {mapping.value!r} is also used as a label")
    return problems


def _values_problems(at: str, metric: catalog.Metric, mapping: MetricMapping) -> list[str]:
    """``values``: one label of the metric, taken from no column, each value a column."""
    label = mapping.value_label
    if label is None:
        return []
    if mapping.value is not None:
        return [f"{at}.values: give value (one column) or values (one per label value), not both"]
    if label not in metric.labels:
        return [
            f"{at}.values: {label} not a label of {metric.name}"
            f" (its labels: {', '.join(metric.labels) or 'none'})"
        ]
    problems = []
    if label in mapping.labels:
        problems.append(f"{at}.values: {label} takes its values here; remove it from labels")
    if label in mapping.drop_labels or label in mapping.hash_labels:
        problems.append(f"{at}.values: {label} cannot also be dropped or hashed")
    label_columns = set(mapping.labels.values())
    if both := sorted(label_columns & set(mapping.value_columns.values())):
        problems.append(f"{at}.values: column {', '.join(both)} is also used as a label")
    return problems


def _label_problems(at: str, metric: catalog.Metric, mapping: MetricMapping) -> list[str]:
    problems = []
    for key in ("hash_labels", "drop_labels"):
        chosen: list[str] = getattr(mapping, key)
        if unknown := sorted(set(chosen) - set(metric.labels)):
            problems.append(
                f"{at}.{key}: {', '.join(unknown)} not a label of {metric.name}"
                f" (its labels: {', '.join(metric.labels) or 'none'})"
            )
        if len(set(chosen)) != len(chosen):
            problems.append(f"{at}.{key}: a label is listed twice")
    if both := sorted(set(mapping.hash_labels) & set(mapping.drop_labels)):
        problems.append(f"{at}.hash_labels: {', '.join(both)} is also dropped (drop_labels)")
    problems += _values_problems(at, metric, mapping)
    # a dropped label needs no column, and the column it names, if any, is not read;
    # the label of ``values`` takes its values from the config
    expected, given = set(metric.labels), set(mapping.labels)
    spread = {mapping.value_label} if mapping.value_label else set()
    if missing := sorted(expected - given - set(mapping.drop_labels) - spread):
        problems.append(f"{at}.labels: missing {', '.join(missing)} for {metric.name}")
    if extra := sorted(given - expected):
        allowed = ", ".join(metric.labels) or "none"
        problems.append(
            f"{at}.labels: {', '.join(extra)} not a label of {metric.name} (its labels: {allowed})"
        )
    columns = [c for label, c in mapping.labels.items() if label not in mapping.drop_labels]
    if len(set(columns)) != len(columns):
        problems.append(f"{at}.labels: two labels read the same column")
    return problems


def parse_config(data: Mapping[str, Any] | None) -> Config:
    """Validate an already-parsed YAML document."""
    if not isinstance(data, Mapping):
        raise ConfigError(["(top level): must be a mapping with databases and queries"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_pydantic_problems(exc)) from None
    if problems := _catalogue_problems(config):
        raise ConfigError(problems)
    _resolve_policies(config)
    return config


def _mappings(config: Config) -> Iterator[tuple[str, MetricMapping]]:
    for kind, sources in (("queries", config.queries), ("streams", config.streams)):
        for name, source in sources.items():
            for index, mapping in enumerate(source.metrics):
                yield f"{kind}.{name}.metrics[{index}]", mapping


def _resolve_policies(config: Config) -> None:
    """Give every mapping its LabelPolicy (caps, hashing, dropping, NULL replacements);
    read the HMAC key once if any label is hashed."""
    hashing = [at for at, mapping in _mappings(config) if mapping.hash_labels]
    key = b""
    if hashing:
        if config.privacy is None:
            raise ConfigError(
                [f"privacy: required by {hashing[0]}.hash_labels (set hmac_key_env or"
                 " hmac_key_file)"]
            )  # fmt: skip
        key = config.privacy.resolve_key()
    for _, mapping in _mappings(config):
        own = mapping.limits or MappingLimits()
        mapping._policy = caps.LabelPolicy(
            max_series=own.max_series_per_metric or config.limits.max_series_per_metric,
            max_label_value_length=(
                own.max_label_value_length or config.limits.max_label_value_length
            ),
            hashed=frozenset(mapping.hash_labels),
            dropped=frozenset(mapping.drop_labels),
            key=key if mapping.hash_labels else b"",
            if_null=mapping.if_null,
        )


def read_yaml(path: str | Path) -> Any:
    """A YAML file's document; ``ValueError("PATH: problem")`` if it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ValueError(f"{path}: {problem}{where}") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise ConfigError([str(exc)]) from None
    return parse_config(data)
