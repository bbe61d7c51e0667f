"""CSV (one file per table, in a directory or a zip) and JSON output."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from credit_exporter.report.model import TABLES, Report, columns
from credit_exporter.report.serialize import plain, row_dict, to_document


def json_bytes(report: Report) -> bytes:
    return (json.dumps(to_document(report), indent=2, ensure_ascii=False) + "\n").encode()


def csv_files(report: Report) -> dict[str, bytes]:
    """``summary.csv`` (metric,value) and one ``<table>.csv`` per table, header always present."""
    files: dict[str, bytes] = {}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["metric", "value"])
    document = to_document(report)
    for key in ("generated_at", "organization", "source"):
        writer.writerow([key, _cell(document[key])])
    for key, value in document["period"].items():
        writer.writerow([f"period_{key}", _cell(value)])
    for key, value in document["summary"].items():
        writer.writerow([key, _cell(value)])
    files["summary.csv"] = out.getvalue().encode()
    for name, row_type in TABLES.items():
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        names = columns(row_type)
        writer.writerow(names)
        for row in report.tables.get(name, []):
            values = row_dict(row)
            writer.writerow([_cell(values[n]) for n in names])
        files[f"{name}.csv"] = out.getvalue().encode()
    return files


def _cell(value: object) -> str:
    value = plain(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def write_csv(report: Report, output: Path) -> list[Path]:
    """A ``.zip`` path gets a zip archive; any other path is a directory (created)."""
    files = csv_files(report)
    if output.suffix == ".zip":
        output.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return [output]
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in files.items():
        (output / name).write_bytes(data)
        written.append(output / name)
    return written


class WebhookError(Exception):
    """The webhook could not be reached or refused the document; the message is one line."""


def is_http_url(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _where(url: str) -> str:
    """host:port of the URL only: a webhook's path or query often holds its secret."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname}:{port}"


def post_webhook(report: Report, url: str, timeout: float = 30.0) -> int:
    """POST the JSON document; returns the HTTP status, raises WebhookError on failure."""
    request = urllib.request.Request(
        url,
        data=json_bytes(report),
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "credit-exporter-report"},
    )
    where = _where(url)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        raise WebhookError(f"{where} answered HTTP {error.code}") from None
    except urllib.error.URLError as error:
        reason = error.reason
        text = reason.strerror if isinstance(reason, OSError) and reason.strerror else reason
        raise WebhookError(f"could not connect to {where}: {text}") from None
    except TimeoutError:
        raise WebhookError(f"{where} did not answer within {timeout:g} s") from None
    except (OSError, ValueError) as error:  # a reset connection, a bad port number
        raise WebhookError(f"could not POST to {where}: {error}") from None
