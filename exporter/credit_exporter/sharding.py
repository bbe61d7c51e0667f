"""``--shard N/M``: split organizations across M exporter processes.

An organization belongs to shard ``bucket(organization) + 1`` where ``bucket``
is the first 32 bits of the MD5 of the label value (UTF-8), modulo M.
PostgreSQL computes the same number from ``md5(column::text)``, so the filter
runs in the database. A stream's SQL is wrapped as a subquery with a ``WHERE``
on its organization column, which the planner pushes below the aggregate: each
shard aggregates only its own organizations' rows. A state query runs whole
behind a MATERIALIZED CTE and only its result is filtered (see ``filter_sql``):
state queries are small, and a pushed-down filter can ruin their plans.

Queries whose metrics have no ``organization`` label (the model multipliers in
the reference config) run on shard 1 only. A query or stream that mixes
metrics with and without the label, or reads the label from two columns,
cannot be split and is a configuration error under ``--shard``.
Rows with a NULL organization are passed to the shard that owns the
organization label's ``if_null`` text, where they join the organization that
text names; without ``if_null``, to shard 1, which counts them as dropped like
an unsharded exporter does. Metrics of one source that give the label
different ``if_null`` texts cannot be split.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from credit_exporter.config import Config, ConfigError, MetricMapping

ORGANIZATION_LABEL = "organization"
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_SUBQUERY_ALIAS = "credit_exporter_shard"
_SOURCE_CTE = "credit_exporter_source"


def bucket(organization: str, count: int) -> int:
    """The 0-based bucket of an organization label value among ``count`` shards."""
    digest = hashlib.md5(organization.encode("utf-8"), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % count


def bucket_sql(expression: str, count: int) -> str:
    """The SQL twin of ``bucket`` for a text expression (NULL for NULL).

    mod(), not %: stream statements carry %(name)s parameters."""
    return f"mod(('x' || substr(md5({expression}), 1, 8))::bit(32)::bigint, {count})"


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``N/M`` with 1 <= N <= M; ValueError says what is wrong."""
        match = _SHARD.match(text)
        if match is None:
            raise ValueError(f"must be N/M (this shard's number / number of shards), got {text!r}")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1:
            raise ValueError(f"the number of shards must be at least 1, got {text!r}")
        if not 1 <= index <= count:
            raise ValueError(f"the shard number must be between 1 and {count}, got {text!r}")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, organization: str) -> bool:
        return bucket(organization, self.count) == self.index - 1

    def filter_sql(self, sql_text: str, column: str, *, fence: bool, null_bucket: int = 0) -> str:
        """``sql_text`` wrapped so it returns only this shard's organizations' rows
        (and the NULL organizations when this shard is bucket ``null_bucket``).

        ``fence`` runs the source as a MATERIALIZED CTE and filters its result:
        the source keeps its own plan. Without it the planner pushes the filter
        into the source (what a stream needs: its key bound must reach the index),
        where its 1-row estimate can turn a state query's hash joins into
        nested loops (measured: the example's budgets query 3-6x slower).
        """
        value = f"{_SUBQUERY_ALIAS}.{quote_identifier(column)}"
        condition = f"{bucket_sql(value + '::text', self.count)} = {self.index - 1}"
        if self.index - 1 == null_bucket:
            condition += f" OR {value} IS NULL"
        source = sql_text.strip().rstrip(";")
        # newlines: the source may end in a -- comment
        if fence:
            return (
                f"WITH {_SOURCE_CTE} AS MATERIALIZED (\n{source}\n)\n"
                f"SELECT * FROM {_SOURCE_CTE} AS {_SUBQUERY_ALIAS} WHERE {condition}"
            )
        return f"SELECT * FROM (\n{source}\n) AS {_SUBQUERY_ALIAS} WHERE {condition}"


class _NoOrganization:
    """Marker: none of a source's metrics has the organization label."""


NO_ORGANIZATION = _NoOrganization()


def organization_column(
    where: str, mappings: Sequence[MetricMapping], problems: list[str]
) -> str | _NoOrganization | None:
    """The one column a source's organization label reads, NO_ORGANIZATION, or None
    (with a problem appended) when the source cannot be split."""
    columns = [mapping.labels.get(ORGANIZATION_LABEL) for mapping in mappings]
    present = sorted({c for c in columns if c is not None})
    if not present:
        return NO_ORGANIZATION
    if None in columns:
        without = [m.metric for m in mappings if ORGANIZATION_LABEL not in m.labels]
        problems.append(
            f"{where}: --shard cannot split a source whose metrics {', '.join(without)} have no "
            "organization label while the others have one; move them to their own query"
        )
        return None
    if len(present) > 1:
        problems.append(
            f"{where}: --shard needs every metric's organization label to read the same "
            f"column, got {', '.join(present)}"
        )
        return None
    return present[0]


def null_bucket(
    where: str, mappings: Sequence[MetricMapping], count: int, problems: list[str]
) -> int:
    """The bucket of a source's NULL organizations: that of the organization label's
    ``if_null`` text, 0 without one (with a problem appended if the metrics disagree)."""
    texts = sorted(
        {m.if_null[ORGANIZATION_LABEL] for m in mappings if ORGANIZATION_LABEL in m.if_null}
    )
    if len(texts) > 1:
        problems.append(
            f"{where}: --shard needs every metric's organization label to give the same"
            f" if_null, got {', '.join(map(repr, texts))}"
        )
        return 0
    return bucket(texts[0], count) if texts else 0


def apply(config: Config, shard: Shard | None) -> Config:
    """The config this shard runs: filtered SQL, organization-less queries on shard 1 only.

    Raises ConfigError (``key.path: problem``) when a source cannot be split.
    """
    if shard is None or shard.count == 1:
        return config
    problems: list[str] = []
    queries = {}
    for name, query in config.queries.items():
        where = f"queries.{name}"
        column = organization_column(where, query.metrics, problems)
        if isinstance(column, str):
            nulls = null_bucket(where, query.metrics, shard.count, problems)
            sharded = shard.filter_sql(query.sql, column, fence=True, null_bucket=nulls)
            queries[name] = query.model_copy(update={"sql": sharded})
        elif column is NO_ORGANIZATION and shard.index == 1:
            queries[name] = query
    streams = {}
    for name, stream in config.streams.items():
        where = f"streams.{name}"
        column = organization_column(where, stream.metrics, problems)
        if isinstance(column, str):
            nulls = null_bucket(where, stream.metrics, shard.count, problems)
            sharded = shard.filter_sql(stream.sql, column, fence=False, null_bucket=nulls)
            streams[name] = stream.model_copy(update={"sql": sharded})
        elif column is NO_ORGANIZATION and shard.index == 1:
            streams[name] = stream
    if problems:
        raise ConfigError(problems)
    return config.model_copy(update={"queries": queries, "streams": streams})
