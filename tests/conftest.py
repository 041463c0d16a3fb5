"""Shared fixtures. ``shared_data``: the real test clips (see ../shared/data/README.md), or a skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$MMVID_SHARED_DATA, else <repo>/../shared/data, else /work/shared/data; None when absent."""
    for cand in (os.environ.get("MMVID_SHARED_DATA"), REPO.parent / "shared" / "data", "/work/shared/data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if root is None:
        pytest.skip("real test clips not found: set MMVID_SHARED_DATA or place them in ../shared/data")
    return root
