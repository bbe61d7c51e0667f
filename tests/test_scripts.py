"""scripts/venv.sh, which scripts/demo and scripts/test source before they run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _source_venv_sh() -> str:
    """Source scripts/venv.sh against the running venv with bash -x; its trace."""
    run = subprocess.run(
        ["bash", "-x", "-c", f'source "{REPO}/scripts/venv.sh"'],
        capture_output=True, text=True, timeout=600,
        env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "EXTRAS": "[test]",
             "CREDIT_EXPORTER_VENV": sys.prefix},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stderr


def test_a_second_start_with_nothing_changed_skips_pip() -> None:
    _source_venv_sh()  # installs if the venv was made some other way
    assert "-m pip install" not in _source_venv_sh()
