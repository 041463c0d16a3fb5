"""The demo figures README.md quotes are the ones `make demo` produces today: the test runs the demo as a user
does (`mmvid demo` in a fresh workspace, in its own process with the default threads) and compares."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ACCURACY = re.compile(r"concat \*\*([\d.]+) %\*\*, concat \+ B-MM \*\*([\d.]+) %\*\* test accuracy")
WITHOUT = re.compile(r"with audio removed ([\d.]+) vs ([\d.]+) %, with video removed ([\d.]+) vs ([\d.]+) %")


def quoted_demo_figures() -> dict[str, float]:
    """The figures of the README's demo paragraph, in percent."""
    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    acc, without = ACCURACY.search(text), WITHOUT.search(text)
    assert acc and without, "README.md no longer quotes the demo's figures in the form this test reads"
    keys = ("none", "bmm", "none_without_audio", "bmm_without_audio", "none_without_video", "bmm_without_video")
    return dict(zip(keys, map(float, acc.groups() + without.groups())))


def test_readme_quotes_the_demo_figures_in_the_form_this_test_reads():
    figures = quoted_demo_figures()
    assert all(0 <= v <= 100 for v in figures.values())


@pytest.mark.slow
def test_make_demo_reproduces_every_figure_the_readme_quotes(tmp_path):
    quoted = quoted_demo_figures()
    env = {k: v for k, v in os.environ.items() if k not in ("MMVID_HOME",)}
    proc = subprocess.run([sys.executable, "-m", "mmvid.cli", "demo", "-w", "ws"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = (tmp_path / "ws" / "comparisons").glob("demo-*/demo-figures.json")
    got = json.loads(path.read_text())
    measured = {"none": got["test_accuracy"]["none"], "bmm": got["test_accuracy"]["bmm"]}
    for m in ("audio", "video"):
        for k in ("none", "bmm"):
            measured[f"{k}_without_{m}"] = got["without"][m][k]
    assert all("best-validation checkpoint" in note for note in got["checkpoint"].values())
    # The README rounds accuracies to 2 decimals (test accuracies of 150 clips) and the others to 1.
    for key, value in quoted.items():
        digits = 2 if key in ("none", "bmm") else 1
        assert round(100 * measured[key], digits) == value, (key, 100 * measured[key], value)
