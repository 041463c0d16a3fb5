"""A data source from a CSV file: ``<root>/clips.csv`` lists ``path,label,split`` of the videos under ``<root>``.

    mmvid prepare csv --root DIR --plugin examples/source.py --name mydata
    mmvid prepare csv --root DIR --plugin examples/source.py --name mydata --image-size 112 --frames 3
    mmvid train --dataset mydata --recipe demo

``clips.csv`` (an optional first line ``path,label,split``), one clip a line::

    dog/clip1.mp4,dog,train
    cat/clip7.mp4,cat,test

``path`` is relative to ``<root>`` (and must stay inside it), ``label`` a class name (classes: the labels'
sorted set, label index = position), ``split`` one of train, val, test. A listed file that does not exist is
reported (the prepare report's ``excluded``, and ``<cache>.missing.txt`` lists its CSV lines), never silently
dropped. The decoding settings are the prepare options' defaults (``mmvid prepare --help``). Once prepared,
training reads the cache only: the source is needed again only to prepare again.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from mmvid.data.sources import ClipSpec, Source, source
from mmvid.errors import MmvidError

SPLITS = ("train", "val", "test")


@source("csv")
def csv_source(root: Path | None = None, **_) -> Source:
    if root is None or not Path(root).is_dir():
        raise MmvidError(f"--root {root} is not a folder; give the folder that holds clips.csv and the videos")
    root = Path(root)
    listing = root / "clips.csv"
    if not listing.is_file():
        raise MmvidError(f"{listing} not found; write one `path,label,split` line per video there")
    rows, missing, seen = [], [], set()
    for n, line in enumerate(listing.read_text(encoding="utf-8-sig").splitlines(), 1):
        fields = [f.strip() for f in line.split(",")]
        if not line.strip() or (n == 1 and fields == ["path", "label", "split"]):
            continue
        if len(fields) != 3 or not all(fields) or fields[2] not in SPLITS:
            raise MmvidError(f"{listing}:{n}: expected `path,label,split` with split one of {', '.join(SPLITS)}, got {line!r}")
        rel = PurePosixPath(fields[0])
        if rel.is_absolute() or ".." in rel.parts:  # a name from the CSV never leads out of <root>
            raise MmvidError(f"{listing}:{n}: {fields[0]} is not a path inside {root}; list paths relative to it")
        video = root / rel
        if video in seen:
            raise MmvidError(f"{listing}:{n}: {fields[0]} is listed twice; list each video once")
        seen.add(video)
        if video.is_file():
            rows.append((video, *fields))
        else:
            missing.append(line.strip())
    if not rows:
        raise MmvidError(f"{listing} lists no existing video; check the paths (relative to {root})")
    classes = sorted({label for _, _, label, _ in rows})
    clips = [ClipSpec(name=Path(path).with_suffix("").as_posix(), label=classes.index(label), split=split, video=video)
             for video, path, label, split in rows]
    return Source("csv", classes, clips, missing=missing,
                  excluded=[{"name": ln.split(",")[0], "reason": "listed in clips.csv, no file"} for ln in missing])
