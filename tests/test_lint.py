"""The code passes the project's lint (`ruff check` with ruff.toml: pyflakes, pycodestyle, import order)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def ruff_command() -> list[str] | None:
    """`ruff` beside this interpreter (the virtual environment's), else on PATH; None when not installed."""
    local = Path(sys.executable).parent / "ruff"
    if local.is_file():
        return [str(local)]
    found = shutil.which("ruff")
    return [found] if found else None


@pytest.mark.skipif(ruff_command() is None, reason="ruff is not installed (pip install ruff)")
def test_ruff_check_passes_with_the_project_configuration():
    proc = subprocess.run([*ruff_command(), "check", "--no-cache", "--output-format", "concise", "."],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_lint_configuration_checks_import_order():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    cfg = tomllib.loads((REPO / "ruff.toml").read_text(encoding="utf-8"))
    assert "I" in cfg["lint"]["select"]
    assert "I" not in cfg["lint"].get("ignore", [])
