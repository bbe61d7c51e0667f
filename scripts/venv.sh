# Sourced by scripts/demo and scripts/test: create or reuse .venv and install
# the project into it (a fresh Debian/Ubuntu python3 refuses system-wide pip).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CREDIT_EXPORTER_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "credit-exporter needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
  exit 1
}
if [ ! -x "$VENV/bin/python" ]; then
  if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
    # Debian ships venv separately
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      rm -rf "$VENV"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      "$PYTHON" -m venv "$VENV"
    else
      echo "python3 -m venv failed: install python3-venv (sudo apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
# The install is editable: code changes need no reinstall, only a changed
# pyproject.toml, extras or Python do. Skip pip (about 3 s) when none changed.
# One stamp per set of extras (scripts/test and scripts/demo ask for different ones).
STAMP="$VENV/.credit-exporter-install${EXTRAS:-}"
WANT="$("$VENV/bin/python" -c 'import sys; print(sys.version)' | head -1) $(cksum < "$ROOT/pyproject.toml") $ROOT"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT${EXTRAS:-}"
  printf '%s\n' "$WANT" > "$STAMP"
fi
