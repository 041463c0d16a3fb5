"""Where caches and runs live: ``--workspace``, else ``$MMVID_HOME``, else ``./mmvid-workspace``."""

from __future__ import annotations

import os
from pathlib import Path

from mmvid.errors import MmvidError


def workspace_dir(path: str | Path | None = None) -> Path:
    root = Path(path or os.environ.get("MMVID_HOME") or "mmvid-workspace")
    return root.expanduser().resolve()


def caches_dir(ws: Path) -> Path:
    return ws / "caches"


def runs_dir(ws: Path) -> Path:
    return ws / "runs"


def cache_path(ws: Path, dataset: str) -> Path:
    return caches_dir(ws) / f"{dataset}.h5"


def resolve_cache(ws: Path, dataset: str | None) -> Path:
    """The named cache, else the only or the most recently prepared one."""
    if dataset:
        p = Path(dataset)
        if p.suffix == ".h5" and p.exists():
            return p.resolve()
        p = cache_path(ws, dataset)
        if not p.exists():
            have = sorted(q.stem for q in caches_dir(ws).glob("*.h5"))
            hint = f"prepared: {', '.join(have)}" if have else "run `mmvid prepare demo` first"
            raise MmvidError(f"no cache for dataset {dataset!r} at {p}; {hint}")
        return p
    found = sorted(caches_dir(ws).glob("*.h5"), key=lambda q: q.stat().st_mtime)
    if not found:
        raise MmvidError(f"no prepared cache in {caches_dir(ws)}; run `mmvid prepare demo` (or another dataset) first")
    return found[-1]


def resolve_run(ws: Path, run: str | Path | None) -> Path:
    """A run folder from a name, a path (folder or checkpoint file), or the latest run."""
    if run:
        p = Path(run)
        if p.is_file():
            return p.parent
        if p.is_dir():
            return p.resolve()
        q = runs_dir(ws) / str(run)
        if q.is_dir():
            return q
        raise MmvidError(f"run {str(run)!r} not found (looked for a folder, a checkpoint, and {q})")
    found = sorted((d for d in runs_dir(ws).glob("*") if (d / "config.yaml").exists()), key=lambda d: d.stat().st_mtime)
    if not found:
        raise MmvidError(f"no runs in {runs_dir(ws)}; run `mmvid train` first")
    return found[-1]
