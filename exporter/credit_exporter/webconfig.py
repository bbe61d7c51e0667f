"""``--web.config.file``: TLS and basic auth in the Prometheus exporter-toolkit format.

The file is the one Prometheus exporters share (``tls_server_config``,
``http_server_config``, ``basic_auth_users``), so one file can serve this
exporter and node_exporter alike. It is read once at start-up (not on reload);
every problem is reported as ``key.path: problem``. What this implementation
does not support is rejected by name rather than silently ignored (see
docs/security.md).

Basic auth applies to every endpoint, including ``/-/healthy`` and
``/-/reload``. Checking a bcrypt hash is slow on purpose (about 300 ms at cost
12), so verified successes are cached per (user, password, hash) under an HMAC
with a key made at start-up: the cache never holds a password, a memory dump
does not give an offline guess for free, and a scrape every few seconds costs
one HMAC, not one bcrypt. How unauthenticated traffic is kept from starving the
polls is in ``BasicAuth`` and docs/security.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
from aiohttp import web

from credit_exporter.config import read_yaml

REALM = "credit-exporter"
CACHE_SIZE = 1024  # verified successes
FAILURE_CACHE_SIZE = 256  # failed attempts, in a cache of their own
MAX_PASSWORD_BYTES = 72  # bcrypt's limit
BCRYPT_WORKERS = 2  # bcrypt checks running at once
BCRYPT_QUEUE = 16  # checks waiting for a worker; beyond that: 429 at once
THROTTLE_BURST = 10.0  # uncached checks a client address may start at once ...
THROTTLE_PER_SECOND = 1.0  # ... and then per second
THROTTLE_CLIENTS = 4096  # client addresses remembered (least recently seen forgotten)
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's crypto/tls can ask for a client certificate without verifying it; Python's ssl cannot.
UNSUPPORTED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
# exporter-toolkit's allowed headers; None means any value
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
TLS_KEYS = ("cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version",
            "max_version", "prefer_server_cipher_suites")  # fmt: skip
TLS_UNSUPPORTED = ("cert", "key", "cipher_suites", "curve_preferences", "client_allowed_sans")
BCRYPT_HASH = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


class WebConfigError(Exception):
    """A web config file that cannot be used; ``problems`` are ``key.path: problem`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def apply(self, app: web.Application) -> None:
        """Add basic auth and the response headers to ``app`` (before it starts)."""
        if self.users:
            app.middlewares.append(BasicAuth(self.users).middleware)
        if self.headers:
            headers = dict(self.headers)

            async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
                response.headers.update(headers)

            app.on_response_prepare.append(add_headers)

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dummy_hash(cost: int) -> bytes:
    """A hash no password matches that costs ``cost`` to check, made at cost 4 (instantly):
    bcrypt reads the cost from the hash, so the check itself pays the full cost."""
    made = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(4))
    return made[:4] + b"%02d" % cost + made[6:]


class BasicAuth:
    """HTTP basic auth against bcrypt hashes, hardened against unauthenticated traffic.

    - Verified successes are cached (keyed HMAC, bounded LRU); failures have a cache of
      their own, so no number of wrong passwords can push a good entry out.
    - A password over bcrypt's 72 bytes is refused without running bcrypt.
    - bcrypt runs in a pool of its own (``workers`` threads), never on the event loop and
      never in the default executor that the polls use for row conversion; at most
      ``queue`` checks wait for a thread, more get 429 at once.
    - Each client address may start ``burst`` uncached checks at once, then ``rate`` per
      second (a token bucket); beyond that it gets 429 without any bcrypt.
    - An unknown user is checked against a dummy hash at the highest configured cost, so
      it takes as long as a known user with a wrong password.
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        cache_size: int = CACHE_SIZE,
        failure_cache_size: int = FAILURE_CACHE_SIZE,
        workers: int = BCRYPT_WORKERS,
        queue: int = BCRYPT_QUEUE,
        burst: float = THROTTLE_BURST,
        rate: float = THROTTLE_PER_SECOND,
    ) -> None:
        self.users = dict(users)
        self.cache_size = cache_size
        self.failure_cache_size = failure_cache_size
        self.queue = queue
        self.burst = burst
        self.rate = rate
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, None] = OrderedDict()  # verified successes only
        self._failures: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()  # checks run in worker threads
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending = 0  # checks running or waiting for a worker
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client: tokens, t
        # unknown users are checked against this, so they take as long as known ones
        self.cost = max((int(h[4:6]) for h in self.users.values()), default=10)
        self._dummy = _dummy_hash(self.cost)

    def _cache_key(self, user: str, password: str, hashed: bytes) -> bytes:
        message = b"\0".join((user.encode(), password.encode(), hashed))
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def cached(self, user: str, password: str) -> bool | None:
        """The cached answer for this pair, or None when only bcrypt can tell."""
        if len(password.encode()) > MAX_PASSWORD_BYTES:
            return False  # bcrypt would refuse it anyway: no need to spend a check
        key = self._cache_key(user, password, self.users.get(user, self._dummy))
        with self._lock:
            for cache, answer in ((self._cache, True), (self._failures, False)):
                if key in cache:
                    cache.move_to_end(key)
                    return answer
        return None

    def check(self, user: str, password: str) -> bool:
        """Verify (slow) or look up (fast) one user/password pair."""
        answer = self.cached(user, password)
        if answer is not None:
            return answer
        known = user in self.users
        hashed = self.users.get(user, self._dummy)
        try:
            ok = bcrypt.checkpw(password.encode(), hashed) and known
        except ValueError:
            ok = False
        key = self._cache_key(user, password, hashed)
        cache, size = (self._cache, self.cache_size) if ok else (
            self._failures, self.failure_cache_size)  # fmt: skip
        with self._lock:
            cache[key] = None
            while len(cache) > size:
                cache.popitem(last=False)
        return ok

    def is_cached(self, user: str, password: str) -> bool:
        return self.cached(user, password) is not None

    def _take_token(self, client: str) -> bool:
        """Token bucket per client address: False when it has run out."""
        now = time.monotonic()
        tokens, updated = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - updated) * self.rate)
        allowed = tokens >= 1
        self._buckets[client] = (tokens - 1 if allowed else tokens, now)
        while len(self._buckets) > THROTTLE_CLIENTS:
            self._buckets.popitem(last=False)
        return allowed

    def _check_done(self, _: object) -> None:
        self._pending -= 1

    async def verify(self, user: str, password: str, client: str) -> bool | None:
        """True or False, or None when the check was refused (throttled or queue full)."""
        answer = self.cached(user, password)
        if answer is not None:
            return answer
        if self._pending >= self._workers + self.queue or not self._take_token(client):
            return None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="bcrypt")
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, self.check, user, password
        )
        self._pending += 1
        future.add_done_callback(self._check_done)
        # a client that hangs up does not cancel the check, so _pending stays true
        return await asyncio.shield(future)

    @staticmethod
    def credentials(header: str | None) -> tuple[str, str] | None:
        if not header or header[:6].lower() != "basic ":
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        return (user, password) if sep else None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = self.credentials(request.headers.get("Authorization"))
        if given is not None:
            ok = await self.verify(*given, client=request.remote or "")
            if ok is None:
                return web.Response(
                    status=429, text="Too many authentication attempts; retry later\n",
                    headers={"Retry-After": "1"},
                )  # fmt: skip
            if ok:
                return await handler(request)
        return web.Response(
            status=401,
            text="Unauthorized\n",
            headers={"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'},
        )


# --- parsing ----------------------------------------------------------------------------------


def _mapping(value: Any, at: str, problems: list[str]) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{at}: must be a mapping")
        return {}
    return value


def _unknown_keys(
    data: Mapping[str, Any], at: str, known: tuple[str, ...], unsupported: tuple[str, ...],
    problems: list[str],
) -> None:  # fmt: skip
    for key in data:
        where = f"{at}.{key}" if at else str(key)
        if key in unsupported:
            problems.append(f"{where}: not supported by credit-exporter (see docs/security.md)")
        elif key not in known:
            problems.append(f"{where}: unknown key")


def _readable(value: Any, at: str, base: Path, problems: list[str]) -> Path | None:
    if not isinstance(value, str) or not value:
        problems.append(f"{at}: must be a file path")
        return None
    path = base / value
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        problems.append(f"{at}: cannot read {path}: {exc.strerror}")
        return None
    return path


def _tls_version(value: Any, at: str, default: str, problems: list[str]) -> ssl.TLSVersion:
    name = default if value is None else value
    if name not in TLS_VERSIONS:
        problems.append(f"{at}: must be one of {', '.join(TLS_VERSIONS)}, got {value!r}")
        return TLS_VERSIONS[default]
    return TLS_VERSIONS[name]


def _ssl_context(data: Mapping[str, Any], base: Path, problems: list[str]) -> ssl.SSLContext | None:
    at = "tls_server_config"
    _unknown_keys(data, at, TLS_KEYS, TLS_UNSUPPORTED, problems)
    before = len(problems)
    for key in ("cert_file", "key_file"):
        if key not in data:
            problems.append(f"{at}.{key}: required when tls_server_config is given")
    cert = _readable(data["cert_file"], f"{at}.cert_file", base, problems) if (
        "cert_file" in data) else None  # fmt: skip
    key = _readable(data["key_file"], f"{at}.key_file", base, problems) if (
        "key_file" in data) else None  # fmt: skip
    auth_name = data.get("client_auth_type", "NoClientCert")
    if auth_name in UNSUPPORTED_CLIENT_AUTH:
        problems.append(
            f"{at}.client_auth_type: {auth_name} is not supported (Python's TLS cannot accept a "
            "client certificate without verifying it); use VerifyClientCertIfGiven or "
            "RequireAndVerifyClientCert with client_ca_file"
        )
    elif auth_name not in CLIENT_AUTH:
        problems.append(
            f"{at}.client_auth_type: must be one of {', '.join(CLIENT_AUTH)}, got {auth_name!r}"
        )
    verify = CLIENT_AUTH.get(auth_name, ssl.CERT_NONE)
    client_ca = None
    if "client_ca_file" in data:
        client_ca = _readable(data["client_ca_file"], f"{at}.client_ca_file", base, problems)
        if auth_name == "NoClientCert":
            problems.append(
                f"{at}.client_ca_file: given without a client_auth_type that verifies "
                "certificates (VerifyClientCertIfGiven or RequireAndVerifyClientCert)"
            )
    elif verify != ssl.CERT_NONE:
        problems.append(f"{at}.client_ca_file: required with client_auth_type {auth_name}")
    low = _tls_version(data.get("min_version"), f"{at}.min_version", "TLS12", problems)
    high = _tls_version(data.get("max_version"), f"{at}.max_version", "TLS13", problems)
    if low > high:
        problems.append(f"{at}.min_version: is above max_version")
    prefer = data.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.append(f"{at}.prefer_server_cipher_suites: must be true or false")
    if len(problems) > before or cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version, context.maximum_version = low, high
    if prefer is True:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        problems.append(
            f"{at}.cert_file/key_file: cannot load {cert} with {key} "
            f"(not PEM, or the key does not match the certificate): {exc.reason or exc}"
        )
        return None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except ssl.SSLError as exc:
            problems.append(f"{at}.client_ca_file: not a PEM certificate: {exc.reason or exc}")
            return None
    context.verify_mode = verify
    return context


def _headers(data: Mapping[str, Any], problems: list[str]) -> dict[str, str]:
    at = "http_server_config"
    _unknown_keys(data, at, ("headers", "http2"), (), problems)
    if "http2" in data and not isinstance(data["http2"], bool):
        problems.append(f"{at}.http2: must be true or false")
    headers: dict[str, str] = {}
    for name, value in _mapping(data.get("headers"), f"{at}.headers", problems).items():
        where = f"{at}.headers.{name}"
        if name not in HEADERS:
            problems.append(f"{where}: not an allowed header ({', '.join(HEADERS)})")
        elif not isinstance(value, str) or not value:
            problems.append(f"{where}: must be a non-empty string")
        elif (allowed := HEADERS[name]) is not None and value.lower() not in allowed:
            problems.append(f"{where}: must be one of {', '.join(allowed)}, got {value!r}")
        else:
            headers[name] = value
    return headers


def _users(data: Mapping[str, Any], problems: list[str]) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for user, hashed in data.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or not user or ":" in user:
            problems.append(f"{where}: a user name must be a non-empty string without ':'")
        elif not isinstance(hashed, str) or not BCRYPT_HASH.match(hashed):
            # the value is not echoed: it may be a plain-text password by mistake
            problems.append(
                f"{where}: not a bcrypt hash (expected $2y$/$2b$ and 53 characters, e.g. "
                "from htpasswd -nBC 10 USER or bcrypt.hashpw)"
            )
        else:
            users[user] = hashed.encode()
    return users


def parse_web_config(data: Any, base: Path) -> WebConfig:
    """Validate an already-parsed document; file paths are relative to ``base``."""
    if data is None:
        return WebConfig()
    if not isinstance(data, Mapping):
        raise WebConfigError(["(top level): must be a mapping"])
    problems: list[str] = []
    _unknown_keys(
        data, "", ("tls_server_config", "http_server_config", "basic_auth_users"),
        ("rate_limit",), problems,
    )  # fmt: skip
    tls = _mapping(data.get("tls_server_config"), "tls_server_config", problems)
    context = _ssl_context(tls, base, problems) if "tls_server_config" in data else None
    http = _mapping(data.get("http_server_config"), "http_server_config", problems)
    headers = _headers(http, problems)
    users = _users(_mapping(data.get("basic_auth_users"), "basic_auth_users", problems), problems)
    if problems:
        raise WebConfigError(problems)
    return WebConfig(ssl_context=context, users=users, headers=headers)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file."""
    path = Path(path)
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise WebConfigError([str(exc)]) from None
    return parse_web_config(data, path.parent)
