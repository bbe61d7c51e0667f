"""--web.config.file: TLS, client certificates, basic auth and headers on the real exporter.

Certificates are made in the test with the ``cryptography`` package; the exporter
is the real ``credit-exporter run`` process on loopback, against a real schema DB.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support import Service, wait_until

from credit_exporter.demo.embedded import free_port
from credit_exporter.demo.schema import apply_migrations
from credit_exporter.webconfig import BasicAuth

USER, PASSWORD = "prometheus", "scrape-Pa55-word"
MODELS_QUERY = {
    "database": "billing",
    "interval": "5s",
    "timeout": "2s",
    "sql": "SELECT slug AS gen_ai_request_model, provider AS gen_ai_provider_name, tier, "
    "multiplier FROM models",
    "metrics": [
        {"metric": "credit_model_multiplier_ratio", "value": "multiplier",
         "labels": ["gen_ai_request_model", "gen_ai_provider_name", "tier"]},
    ],
}  # fmt: skip


# --- certificates -----------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Name, Any] | None,
    ca: bool = False, san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:  # fmt: skip
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )  # fmt: skip
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any = None) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost, a client certificate, another CA."""
    folder = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _certificate("credit-exporter test CA", ca_key, None, ca=True)
    server_key = _key()
    server = _certificate(
        "localhost", server_key, (ca.subject, ca_key),
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )  # fmt: skip
    client_key = _key()
    client = _certificate("prometheus", client_key, (ca.subject, ca_key))
    other_key = _key()
    other = _certificate("some other CA", other_key, None, ca=True)
    _write(folder / "ca.pem", ca)
    _write(folder / "server.pem", server, server_key)
    _write(folder / "client.pem", client, client_key)
    _write(folder / "other-ca.pem", other)
    return Pki(
        folder / "ca.pem", folder / "server.pem", folder / "server.key",
        folder / "client.pem", folder / "client.key", folder / "other-ca.pem",
    )  # fmt: skip


# --- the exporter -----------------------------------------------------------------------------


def _client_context(ca: Path | None, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if cert:
        context.load_cert_chain(*cert)
    return context


def request(
    url: str, context: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
    method: str = "GET",
) -> tuple[int, bytes, Any]:  # fmt: skip
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    req = urllib.request.Request(
        url, headers=headers, method=method, data=b"" if method == "POST" else None
    )
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def _write_configs(workdir: Path, dsn: str, web: dict[str, Any]) -> tuple[Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump({
        "databases": {"billing": {"dsn": dsn}}, "queries": {"models": MODELS_QUERY},
    }))  # fmt: skip
    web_file = workdir / "web.yml"
    web_file.write_text(yaml.safe_dump(web))
    return config, web_file


def start(
    workdir: Path, dsn: str, web: dict[str, Any], probe: Any, keep: list[Service] | None = None
) -> tuple[Service, str]:
    """Start ``credit-exporter run --web.config.file``; ``probe(url)`` says when it serves.

    (support.launch probes plain, unauthenticated HTTP, which this server refuses.) The
    process is stopped after the test, or by the owner of ``keep``.
    """
    config, web_file = _write_configs(workdir, dsn, web)
    port = free_port()
    log_path = workdir / "exporter.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "credit_exporter", "run", "--config", str(config),
         "--listen", f"127.0.0.1:{port}", "--web.config.file", str(web_file)],
        stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    service = Service(process, "", log_path)
    (_STARTED if keep is None else keep).append(service)
    scheme = "https" if "tls_server_config" in web else "http"
    service.url = f"{scheme}://127.0.0.1:{port}"

    def serving() -> bool:
        assert process.poll() is None, service.log()
        try:
            return bool(probe(service.url))
        except OSError:
            return False

    wait_until(serving, 20, "the exporter to serve")
    return service, service.url


_STARTED: list[Service] = []


@pytest.fixture(autouse=True)
def _stop_exporters() -> Iterator[None]:
    yield
    while _STARTED:
        _STARTED.pop().stop()


def _hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


# --- TLS --------------------------------------------------------------------------------------


def test_tls_handshake_succeeds_with_the_ca_and_fails_without_it(
    pki: Pki, schema_db: str, tmp_path: Path
) -> None:
    web = {"tls_server_config": {"cert_file": str(pki.server_cert),
                                 "key_file": str(pki.server_key)}}  # fmt: skip
    trusted = _client_context(pki.ca)
    _, url = start(tmp_path, schema_db, web, lambda u: request(u + "/-/healthy", trusted)[0])

    status, body, _ = request(url + "/metrics", trusted)
    assert status == 200
    assert b"credit_exporter_query_up" in body
    for untrusted in (_client_context(None), _client_context(pki.other_ca)):
        with pytest.raises(urllib.error.URLError) as failure:
            request(url + "/metrics", untrusted)
        assert isinstance(failure.value.reason, ssl.SSLCertVerificationError)
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP on a TLS port
        request(url.replace("https:", "http:") + "/metrics")


def test_tls_min_version_refuses_older_clients(pki: Pki, schema_db: str, tmp_path: Path) -> None:
    web = {"tls_server_config": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "min_version": "TLS13",
    }}  # fmt: skip
    trusted = _client_context(pki.ca)
    _, url = start(tmp_path, schema_db, web, lambda u: request(u + "/-/healthy", trusted)[0])

    tls12_only = _client_context(pki.ca)
    tls12_only.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(urllib.error.URLError) as failure:
        request(url + "/metrics", tls12_only)
    assert isinstance(failure.value.reason, ssl.SSLError)
    assert request(url + "/metrics", trusted)[0] == 200


def test_required_client_certificate_is_verified_against_client_ca_file(
    pki: Pki, schema_db: str, tmp_path: Path
) -> None:
    web = {"tls_server_config": {
        "cert_file": str(pki.server_cert), "key_file": str(pki.server_key),
        "client_auth_type": "RequireAndVerifyClientCert", "client_ca_file": str(pki.ca),
    }}  # fmt: skip
    with_cert = _client_context(pki.ca, (pki.client_cert, pki.client_key))
    _, url = start(tmp_path, schema_db, web, lambda u: request(u + "/-/healthy", with_cert)[0])

    assert request(url + "/metrics", with_cert)[0] == 200
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        request(url + "/metrics", _client_context(pki.ca))


# --- basic auth -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(
    pki: Pki, make_database: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ssl.SSLContext]]:
    """TLS plus basic auth for one user, and a security header (one server for the module)."""
    dsn = make_database()
    apply_migrations(dsn)
    web = {
        "tls_server_config": {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key)},
        "basic_auth_users": {USER: _hash(PASSWORD)},
        "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
    }
    trusted = _client_context(pki.ca)
    services: list[Service] = []
    _, url = start(
        tmp_path_factory.mktemp("auth"), dsn, web,
        lambda u: request(u + "/-/healthy", trusted, (USER, PASSWORD))[0] == 200, services,
    )  # fmt: skip
    yield url, trusted
    for service in services:
        service.stop()


@pytest.mark.parametrize("path,method", [("/metrics", "GET"), ("/-/reload", "POST"),
                                         ("/-/healthy", "GET"), ("/", "GET")])  # fmt: skip
@pytest.mark.parametrize("auth", [None, (USER, "wrong"), ("nobody", PASSWORD), (USER, "")])
def test_missing_or_wrong_credentials_get_401_with_a_challenge(
    auth_server: tuple[str, ssl.SSLContext], path: str, method: str, auth: Any
) -> None:
    url, context = auth_server
    status, body, headers = request(url + path, context, auth, method)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith('Basic realm="credit-exporter"')
    assert b"credit_" not in body and b"Reloaded" not in body


def test_right_credentials_get_200_on_metrics_and_reload(
    auth_server: tuple[str, ssl.SSLContext],
) -> None:
    url, context = auth_server
    status, body, headers = request(url + "/metrics", context, (USER, PASSWORD))
    assert status == 200 and b"credit_exporter_query_up" in body
    assert headers["X-Frame-Options"] == "deny"
    status, body, _ = request(url + "/-/reload", context, (USER, PASSWORD), "POST")
    assert (status, body) == (200, b"Reloaded.\n")


def test_headers_from_http_server_config_are_on_401_answers_too(
    auth_server: tuple[str, ssl.SSLContext],
) -> None:
    url, context = auth_server
    status, _, headers = request(url + "/metrics", context)
    assert status == 401 and headers["X-Frame-Options"] == "deny"


def test_malformed_authorization_headers_get_401(auth_server: tuple[str, ssl.SSLContext]) -> None:
    url, context = auth_server
    for value in ("Basic !!!notbase64", "Basic " + base64.b64encode(b"no-colon").decode(),
                  "Bearer abc", "Basic " + base64.b64encode(b"\xff\xfe:x").decode()):  # fmt: skip
        req = urllib.request.Request(url + "/metrics", headers={"Authorization": value})
        with pytest.raises(urllib.error.HTTPError) as failure:
            urllib.request.urlopen(req, timeout=10, context=context)
        assert failure.value.code == 401, value


def test_bcrypt_results_are_cached_so_repeated_scrapes_are_cheap() -> None:
    auth = BasicAuth({USER: _hash(PASSWORD, cost=12).encode()})
    started = time.perf_counter()
    assert auth.check(USER, PASSWORD)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(100):
        assert auth.check(USER, PASSWORD)
    repeated = (time.perf_counter() - started) / 100
    assert first > 0.05, f"cost 12 bcrypt took only {first:.3f}s: is the hash checked at all?"
    assert repeated < 0.002, f"a cached check took {repeated * 1000:.1f} ms"
    assert not auth.check(USER, "wrong") and not auth.check(USER, "wrong")
    assert not auth.check("nobody", PASSWORD)
    assert not auth.check(USER, "x" * 100)  # beyond bcrypt's 72 bytes: refused, not a crash
    assert all(PASSWORD.encode() not in key for key in auth._cache)


def test_the_caches_are_bounded() -> None:
    auth = BasicAuth({USER: _hash(PASSWORD).encode()}, cache_size=3, failure_cache_size=3)
    for attempt in range(10):
        auth.check(USER, f"guess-{attempt}")
    assert len(auth._failures) == 3 and not auth._cache


# --- bad files --------------------------------------------------------------------------------


def _run_with_web_config(tmp_path: Path, web_text: str) -> subprocess.CompletedProcess[str]:
    config, web_file = _write_configs(tmp_path, "postgresql://127.0.0.1:1/none", {})
    web_file.write_text(web_text)
    return subprocess.run(
        [sys.executable, "-m", "credit_exporter", "run", "--config", str(config),
         "--listen", "127.0.0.1:0", "--web.config.file", str(web_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    "web,expected",
    [
        ({"basic_auth_user": {USER: "x"}}, "basic_auth_user: unknown key"),
        ({"tls_server_config": {"cert_file": "/nonexistent/server.pem", "key_file": "{key}"}},
         "tls_server_config.cert_file: cannot read /nonexistent/server.pem"),
        ({"tls_server_config": {"cert_file": "{cert}"}},
         "tls_server_config.key_file: required"),
        ({"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}", "min_version": "TLS9"}},
         "tls_server_config.min_version: must be one of TLS10, TLS11, TLS12, TLS13"),
        ({"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}",
                                "client_auth_type": "RequireAndVerifyClientCert"}},
         "tls_server_config.client_ca_file: required with client_auth_type"),
        ({"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}",
                                "client_auth_type": "RequireAnyClientCert"}},
         "tls_server_config.client_auth_type: RequireAnyClientCert is not supported"),
        ({"tls_server_config": {"cert_file": "{key}", "key_file": "{cert}"}},
         "tls_server_config.cert_file/key_file: cannot load"),
        ({"tls_server_config": {"cert_file": "{cert}", "key_file": "{key}",
                                "cipher_suites": ["TLS_AES_128_GCM_SHA256"]}},
         "tls_server_config.cipher_suites: not supported"),
        ({"basic_auth_users": {USER: "plain-text-Pa55"}}, f"basic_auth_users.{USER}: not a bcrypt"),
        ({"http_server_config": {"headers": {"X-Powered-By": "me"}}},
         "http_server_config.headers.X-Powered-By: not an allowed header"),
    ],
)  # fmt: skip
def test_bad_web_config_exits_2_naming_the_key(
    pki: Pki, tmp_path: Path, web: dict[str, Any], expected: str
) -> None:
    text = yaml.safe_dump(web).replace("'{cert}'", str(pki.server_cert))
    text = text.replace("'{key}'", str(pki.server_key)).replace("{key}", str(pki.server_key))
    text = text.replace("{cert}", str(pki.server_cert))
    result = _run_with_web_config(tmp_path, text)
    assert result.returncode == 2, result.stderr
    assert "invalid web configuration" in result.stderr
    assert expected in result.stderr
    assert "plain-text-Pa55" not in result.stderr  # a password pasted by mistake is not echoed


def test_demo_checks_the_web_config_before_starting_anything(tmp_path: Path) -> None:
    web_file = tmp_path / "web.yml"
    web_file.write_text(yaml.safe_dump({"basic_auth_users": {USER: "not-a-hash"}}))
    result = subprocess.run(
        [sys.executable, "-m", "credit_exporter", "demo", "--data-dir", str(tmp_path / "pg"),
         "--web.config.file", str(web_file)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert f"basic_auth_users.{USER}: not a bcrypt hash" in result.stderr
    assert not (tmp_path / "pg").exists()  # no database was started
