"""Where caches and runs live: ``--workspace``, else ``$MMVID_HOME``, else ``./mmvid-workspace``."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from pathlib import Path

from mmvid.errors import MmvidError


def workspace_dir(path: str | Path | None = None) -> Path:
    root = Path(path or os.environ.get("MMVID_HOME") or "mmvid-workspace")
    return root.expanduser().resolve()


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` (and its parents) and check that files can be written in it, before any long work.

    A read-only workspace, a full disk, or a file where a folder must be is one line naming the path.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".mmvid-write-test-"):
            pass
    except OSError as e:
        raise unwritable(e, path, what) from None
    return path


def write_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader (or a resume after ``kill -9``) sees the old file or the new
    one, never an empty or half-written one: write a sibling temp file, then ``os.replace`` it over ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


HINTS = {
    errno.EACCES: "choose a writable --workspace (or --out), or change its permissions",
    errno.EPERM: "choose a writable --workspace (or --out), or change its permissions",
    errno.EROFS: "it is on a read-only file system: choose a writable --workspace (or --out)",
    errno.ENOTDIR: "a part of that path is a file, not a folder: move the file or choose another --workspace (or --out)",
    errno.EEXIST: "a file is in the place of that folder: move it or choose another --workspace (or --out)",
    errno.EISDIR: "a folder is in the place of that file: move it or choose another --out",
    errno.ENOSPC: "the disk is full: free some space or choose another --workspace (or --out)",
    errno.EDQUOT: "the disk quota is exceeded: free some space or choose another --workspace (or --out)",
}


def unwritable(e: OSError, path: str | Path | None = None, what: str = "") -> MmvidError:
    """An OSError met while writing ``path`` (default: the file named by the error) as one line;
    the CLI applies it to any OSError that names a file, so that no command shows a traceback."""
    where = path if path is not None else e.filename
    hint = HINTS.get(e.errno or -1, "check that path")
    if path is None and os.path.exists(where) and not os.access(where, os.R_OK):
        verb = "cannot read "
    elif path is not None or e.errno in HINTS:
        verb = f"cannot write {what + ' ' if what else ''}"
    else:
        verb = "cannot use "
    return MmvidError(f"{verb}{where}: {e.strerror or e}; {hint}")


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
            from mmvid.data.sources import GENERATED, SOURCES, get_source

            try:
                get_source(dataset)  # registers the sources
            except MmvidError:
                pass
            how = (f"mmvid prepare {dataset}" + ("" if dataset in GENERATED else " --root DIR") if dataset in SOURCES
                   else f"mmvid prepare folder --root DIR --name {dataset}")
            hint = f"prepare it with `{how}`" + (f" or choose one of the prepared: {', '.join(have)}" if have else "")
            raise MmvidError(f"no cache for dataset {dataset!r} at {p}; {hint}")
        return p
    # shards (<name>.shard-<i>-of-<n>.h5, mmvid.data.shards) are not caches to train on: their merge is
    found = sorted((q for q in caches_dir(ws).glob("*.h5") if not re.search(r"\.shard-\d+-of-\d+\.h5$", q.name)),
                   key=lambda q: q.stat().st_mtime)
    if not found:
        shard = next(iter(sorted(caches_dir(ws).glob("*.shard-*-of-*.h5"))), None)
        if shard is not None:
            name = re.sub(r"\.shard-\d+-of-\d+\.h5$", "", shard.name)
            raise MmvidError(f"no prepared cache in {caches_dir(ws)}, only shards ({shard.name}, ...); merge them "
                             f"with `mmvid prepare {name} --merge` first")
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
