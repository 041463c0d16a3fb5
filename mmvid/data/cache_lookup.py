"""Which cache file a ``--dataset`` value names in the workspace (mmvid.workspace), and, where there is none,
the ``mmvid prepare`` command that makes it (worded from the registered sources)."""

from __future__ import annotations

import re
from pathlib import Path

from mmvid.data.sources import GENERATED, SOURCES
from mmvid.errors import MmvidError
from mmvid.schema import check_name, is_plain_name
from mmvid.workspace import cache_path, caches_dir


def resolve_cache(ws: Path, dataset: str | None, label: str = "--dataset") -> Path:
    """The named cache (a plain name in caches/, or the path of a .h5 file), else the only or the most
    recently prepared one. A cache file given by its path must have a plain name too: it names the runs."""
    if dataset is not None:
        check_name(label, dataset, or_path=".h5")
        p = Path(dataset)
        if p.suffix == ".h5" and p.is_file():
            check_name(f"the name of cache file {p}", p.stem)
            return p.resolve()
        if not is_plain_name(dataset):
            raise MmvidError(f"no cache file at {p}; give the path of a cache that `mmvid prepare` wrote, or the "
                             f"name of a cache in {caches_dir(ws)}")
        p = cache_path(ws, dataset, label)
        if not p.exists():
            have = sorted(q.stem for q in caches_dir(ws).glob("*.h5"))
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
    check_name(f"the name of cache file {found[-1]}", found[-1].stem)  # it names the run and is saved in its config
    return found[-1]
