"""A prepaid-credits ledger whose transactions go from pending to settled.

Modelled on the documented credit-balance transactions of billing platforms
(Stripe's credit balance transactions, Lago's wallet transactions): text ids
(``cbtxn_`` and random characters), the creation time as epoch seconds in a
``bigint`` (``created``), amounts as integer thousandths of a credit, and a
``status`` that starts ``pending`` and is settled (or failed) by an UPDATE
minutes later, when the payment or the usage charge clears.
"""

from __future__ import annotations

import random
import time
from typing import Any

import psycopg

SCHEMA = """
CREATE TABLE credit_transactions (
    id          text PRIMARY KEY,                   -- cbtxn_<random>: no order
    customer    text NOT NULL,
    type        text NOT NULL CHECK (type IN ('grant', 'debit')),
    status      text NOT NULL CHECK (status IN ('pending', 'settled', 'failed')),
    trigger     text NOT NULL DEFAULT 'manual',     -- grants: manual or auto top-up
    amount      bigint NOT NULL,                    -- thousandths of a credit
    created     bigint NOT NULL,                    -- Unix seconds
    settled_at  bigint
);
CREATE INDEX credit_transactions_created ON credit_transactions (created);
"""

TRANSACTIONS_SQL = """
SELECT created,
       customer AS organization,
       trigger,
       CASE WHEN type = 'debit' AND status = 'settled' THEN amount / 1000.0 ELSE 0 END AS spent,
       CASE WHEN type = 'grant' AND status = 'settled' THEN amount / 1000.0 ELSE 0 END AS granted,
       CASE WHEN type = 'grant' AND status = 'settled' THEN 1 ELSE 0 END AS topup
FROM credit_transactions
""".strip()


def transactions_stream(changes_within: str = "1h", **settings: Any) -> dict[str, Any]:
    """The ledger as a stream (the mapping under ``streams:``), for a database named
    ``ledger``: ordered by ``created`` (epoch seconds); a transaction settles or fails
    within ``changes_within`` of its creation, and only settled ones count."""
    return {
        "database": "ledger",
        "time": "created",
        "epoch_unit": "s",
        "arrives_within": "1m",
        "changes_within": changes_within,
        "sql": TRANSACTIONS_SQL + "\n",
        "metrics": [
            {"metric": "credit_spent_by_pool_credits_total", "value": "spent",
             "labels": {"organization": "organization", "pool": "trigger"}},
            {"metric": "credit_topup_credits_total", "value": "granted",
             "labels": {"organization": "organization", "trigger": "trigger"}},
            {"metric": "credit_topups_total", "value": "topup",
             "labels": {"organization": "organization", "trigger": "trigger"}},
        ],
        **settings,
    }  # fmt: skip


CUSTOMERS = ("acme", "globex", "initech")


def create(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)


def open_transaction(
    conn: psycopg.Connection[Any], rng: random.Random, created: int | None = None
) -> str:
    """A new pending transaction (created at ``created``, epoch seconds; default now).
    The caller commits."""
    transaction = "cbtxn_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789")
                                     for _ in range(24))  # fmt: skip
    kind = "grant" if rng.random() < 0.2 else "debit"
    conn.execute(
        "INSERT INTO credit_transactions (id, customer, type, status, trigger, amount, created)"
        " VALUES (%s, %s, %s, 'pending', %s, %s, %s)",
        (transaction, rng.choice(CUSTOMERS), kind,
         rng.choice(("manual", "auto")) if kind == "grant" else "plan",
         rng.randint(1, 500_000), int(time.time()) if created is None else created),
    )  # fmt: skip
    return transaction


def settle(conn: psycopg.Connection[Any], rng: random.Random, transaction: str) -> None:
    """The transaction clears (most do) or fails. The caller commits."""
    status = "failed" if rng.random() < 0.1 else "settled"
    conn.execute(
        "UPDATE credit_transactions SET status = %s, settled_at = %s WHERE id = %s",
        (status, int(time.time()), transaction),
    )
