"""Keep database passwords out of everything the exporter writes.

Two layers:

- ``checked_dsn`` parses a connection string before libpq ever sees it. libpq's
  own parse errors quote the offending text (``invalid percent-encoded token:
  "s3cr3t%zz"``), so a malformed DSN is reported without its text, and the
  password of a well-formed one is remembered.
- ``scrub`` removes every remembered password and DSN, and anything shaped
  like ``password=...`` or ``scheme://user:password@``, from a text. Error
  messages shown to users (``check-config --connect``, the landing page,
  backfill), every log line and uncaught tracebacks go through it.

Secrets shorter than ``MIN_SECRET_LENGTH`` are not remembered: replacing a
two-letter password everywhere would garble every message, and such a
password protects nothing anyway.
"""

from __future__ import annotations

import re
import threading

import psycopg

MASK = "********"
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_secrets: set[str] = set()

# up to the last '@' of the URL: a password may hold an unencoded one
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-z][a-z0-9+.-]*://[^:/@\s]*:)\S*(?P<tail>@)", re.I)
_KEYWORD_PASSWORD = re.compile(
    r"(?P<head>\bpassword\s*=\s*)(?:'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|[^\s,;)]+)", re.I
)


def register(secret: str) -> None:
    """Remember a secret so that ``scrub`` removes it from any later text."""
    if len(secret) >= MIN_SECRET_LENGTH:
        with _lock:
            _secrets.add(secret)


def forget_all() -> None:
    """Forget every remembered secret (for tests: a process never needs to)."""
    with _lock:
        _secrets.clear()


def checked_dsn(dsn: str) -> str:
    """Return ``dsn`` after checking that libpq can parse it; remember its password.

    Raises ``ValueError`` with a message that does not contain the DSN.
    """
    register(dsn)
    scheme, sep, rest = dsn.strip().partition("://")
    if sep and scheme.lower() in ("postgres", "postgresql"):
        before_query = rest.partition("?")[0]
        userinfo = before_query[: before_query.rfind("@")] if "@" in before_query else ""
        if "@" in userinfo or "/" in userinfo:
            # libpq splits at the first '@' or '/': the rest of the password would become
            # the host name, quoted in its errors ("could not translate host name ...")
            register(userinfo.partition(":")[2])
            raise ValueError(
                "a postgresql:// URL whose user name or password holds an unencoded '@' or "
                "'/' (percent-encode them as %40 and %2F; the text is not shown)"
            )
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.Error:
        raise ValueError(
            "not a valid libpq connection string or postgresql:// URL "
            "(the text is not shown: it may hold a password)"
        ) from None
    password = params.get("password")
    if isinstance(password, str):
        register(password)
    return dsn


def scrub(text: str) -> str:
    """``text`` without any remembered secret or password-shaped substring."""
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # a whole DSN before its password
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _URL_PASSWORD.sub(rf"\g<head>{MASK}\g<tail>", text)
    return _KEYWORD_PASSWORD.sub(rf"\g<head>{MASK}", text)
