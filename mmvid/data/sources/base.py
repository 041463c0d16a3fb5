"""What every dataset source shares: the clip and source records, the SOURCES registry and its decorator.

A source turns a dataset's own layout into a list of clips with labels and splits; it never decodes
(``mmvid.data.prepare`` does that for every source the same way).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mmvid.registry_base import Registry
from mmvid.workspace import write_atomic


@dataclass
class ClipSpec:
    name: str
    label: int
    split: str  # train | val | test
    video: Path | None = None  # file with the frames (and the audio unless ``audio`` is given)
    audio: Path | None = None  # separate audio file (CREMA-D AudioWAV), else taken from ``video``
    flow_dir: Path | None = None  # folder of precomputed x_/y_%05d.jpg flow frames
    rgb_dir: Path | None = None  # folder of precomputed img_%05d.jpg frames
    level: str | None = None  # the clip's intensity level, a name in its Source's ``intensity.levels``


@dataclass
class IntensityScale:
    """A dataset's per-clip intensity annotation (e.g. CREMA-D's LO/MD/HI/XX in the file name) and the
    target in [0, 1] it stands for, per class and level: the counterpart of MS-Mix's regression intensity
    |y| / 3 (its SAL target). Stored in the cache by ``prepare`` (mmvid.data.cache)."""

    levels: list[str]  # level names; clip ``level``s index into this list in the cache
    table: list[list[float]]  # (C, L): target of a clip of class c at level l


@dataclass
class Source:
    dataset: str
    class_names: list[str]
    clips: list[ClipSpec]
    params: dict[str, Any] = field(default_factory=dict)  # dataset defaults for PrepareParams
    notes: list[str] = field(default_factory=list)  # what the source noticed (e.g. names not in the split)
    excluded: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}: listed without a file, or in no list
    # the split-list lines (as written there) whose video is absent: ``<cache>.missing.txt``, a list to download
    missing: list[str] = field(default_factory=list)
    intensity: IntensityScale | None = None  # per-clip intensity levels (every clip's ``level`` set), if the dataset has them


def missing_manifest(cache: Path) -> Path:
    return cache.with_name(cache.name + ".missing.txt")


def write_missing_manifest(source: Source, cache: Path) -> Path | None:
    """Write ``<cache>.missing.txt``: one split-list line per clip without a file, in the list's own format
    (so it is itself a list a downloader reads); an old manifest goes once nothing is missing."""
    path = missing_manifest(Path(cache))
    if not source.missing:
        path.unlink(missing_ok=True)
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, "\n".join(source.missing) + "\n")
    return path


SourceFn = Callable[..., Source]
# Every source by name (``mmvid prepare NAME``); an unknown name is the one line that lists the choices.
SOURCES: Registry = Registry("dataset")
GENERATED: set[str] = set()  # sources that write their own videos (under <workspace>/raw/<name> by default)


def source(name: str, generated: bool = False) -> Callable[[SourceFn], SourceFn]:
    """Register ``fn`` as the source ``name`` (``@source("csv")``); ``generated``: it writes its own videos."""

    def deco(fn: SourceFn) -> SourceFn:
        SOURCES.register(name)(fn)
        if generated:
            GENERATED.add(name)
        return fn

    return deco


def get_source(name: str) -> SourceFn:
    """The source registered as ``name`` (mmvid's are registered when :mod:`mmvid.data.sources` is imported)."""
    return SOURCES.get(name)


def stratified_split(labels: list[int], test_fraction: float, seed: int) -> list[str]:
    """Deterministic per-class split: ``round(test_fraction * n_c)`` clips of each class go to test
    (at least one when the class has two or more clips and ``test_fraction > 0``)."""
    rng = np.random.default_rng(seed)
    out = ["train"] * len(labels)
    arr = np.asarray(labels)
    for c in np.unique(arr):
        idx = np.flatnonzero(arr == c)
        rng.shuffle(idx)
        k = int(round(test_fraction * len(idx)))
        if test_fraction > 0 and len(idx) >= 2:
            k = max(k, 1)
        for i in idx[:k]:
            out[i] = "test"
    return out
