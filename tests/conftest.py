"""Shared fixtures: the real clips of ../shared/data and a tiny demo cache + trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# OpenMP threads that wait passively (sleep) instead of spinning, here and in every process the tests start
# (the variable is inherited; torch reads it when imported, after this file). On a machine whose cores are busy
# with other jobs, spinning threads took the cores from the work: with `stress-ng --cpu 2` beside them, the
# training, results, evaluation and diagnose tests took 261 s with passive waiting against 288 s with one
# thread (the first three files alone: 216 s spinning, 154 s with one thread); on the idle machine 146 s
# passive, 154 s with one thread, 142 s spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """$MMVID_SHARED_DATA, else <repo>/../shared/data; None when absent."""
    for cand in (os.environ.get("MMVID_SHARED_DATA"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real test clips not found: set MMVID_SHARED_DATA or place shared/data beside the repository")
    return path


@pytest.fixture(scope="session")
def tiny_ws(tmp_path_factory) -> Path:
    """A workspace with a 60-clip demo cache (prepared through the real decode path)."""
    from rich.console import Console

    from mmvid.workflows import run_prepare

    ws = tmp_path_factory.mktemp("ws")
    run_prepare(Console(quiet=True), ws, "demo", clips=60, progress=False)
    return ws


@pytest.fixture(scope="session")
def tiny_run(tiny_ws) -> Path:
    """One epoch of concat training on the tiny demo cache."""
    from rich.console import Console

    from mmvid.workflows import run_train

    return run_train(Console(quiet=True), tiny_ws, "demo",
                     {"epochs": 1, "run_name": "tiny-concat", "data.batch_size": 16}, progress=False)
