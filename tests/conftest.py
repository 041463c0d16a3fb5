"""Shared fixtures: the real clips of ../shared/data and a tiny demo cache + trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# One intra-op thread, here and in every process the tests start (the variable is inherited; torch reads it
# when imported, after this file). The tests' tiny models gain nothing from a second thread, and on a
# machine whose cores are busy with other jobs OpenMP's waiting threads cost far more than they bring:
# with `stress-ng --cpu 2` beside them, the training tests took 216 s with two threads, 154 s with one
# (60 and 64 s on the idle machine). Tests that start several processes split the cores themselves.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path | None:
    """$MMVID_SHARED_DATA, else <repo>/../shared/data, else /work/shared/data; None when absent."""
    for cand in (os.environ.get("MMVID_SHARED_DATA"), REPO.parent / "shared" / "data", Path("/work/shared/data")):
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
