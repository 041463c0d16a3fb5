"""VGGSound: the official ``vggsound.csv`` (``youtube_id,start_seconds,label,split``, no header) and clips
anywhere under ``<root>`` named ``<id>_<start:06d>`` (or the other common names)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mmvid.data.class_lists import VGGSOUND_CLASSES
from mmvid.data.sources.base import ClipSpec, Source, source
from mmvid.data.sources.listing import Excluded, finish_source, index_videos, read_lines, require_dir
from mmvid.errors import MmvidError

# VGGSound as OGM-GE's loader reads it (dataset/VGGSoundDataset.py: 16 kHz, tiled to 10 s, a 5 s window,
# n_fft 256, hop 128 -> 129 x 626; main.py: --fps 1, --use_video_frames 3). Its window starts at a random
# point of the first 5 s on every read; the cache keeps the first 5 s.
VGGSOUND_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=16000, clip_seconds=5.0, n_fft=256, hop=128)

VGGSOUND_SPLITS = ("train", "test")
VGGSOUND_LABEL = {name: k for k, name in enumerate(VGGSOUND_CLASSES)}


def vggsound_stems(youtube_id: str, start: int) -> tuple[str, ...]:
    """The file stems a VGGSound clip goes by, the canonical one first: ``<id>_<start:06d>`` (the official
    repository's lists, data/test.csv; Hugging Face copies), ``<id>_<start>`` (OGM-GE, PMR and BalanceBenchmark
    read ``item[0] + '_' + item[1]``), ``<id>_<start:06d>_<end:06d>`` (Kinetics-style downloaders) and
    ``<id>_<start ms>_<end ms>`` (audiosetdl), the clips being 10 s long."""
    end = start + 10
    return (f"{youtube_id}_{start:06d}", f"{youtube_id}_{start}", f"{youtube_id}_{start:06d}_{end:06d}",
            f"{youtube_id}_{start * 1000}_{end * 1000}")


def parse_vggsound_csv(path: Path) -> list[tuple[str, int, str, str, str]]:
    """Official ``youtube_id,start_seconds,label,split`` rows (no header; a header row is skipped) ->
    (youtube id, start, label name, split, the row as a csv line)."""
    out = []
    for n, row in enumerate(csv.reader(read_lines(path)), 1):
        row = [f.strip() for f in row]
        if n == 1 and len(row) >= 2 and not row[1].replace(".", "", 1).isdigit() and "start" in row[1].lower():
            continue
        ok = len(row) == 4 and row[0] and row[1].replace(".", "", 1).isdigit() and float(row[1]).is_integer()
        if not ok or row[3] not in VGGSOUND_SPLITS:
            raise MmvidError(f"{path}:{n}: expected `youtube_id,start_seconds,label,split` with whole seconds and "
                             f"split train or test (e.g. `---g-f_I2yQ,1,people marching,test`), got {','.join(row)!r}")
        buf = io.StringIO()
        csv.writer(buf, lineterminator="").writerow(row)
        out.append((row[0], int(float(row[1])), row[2], row[3], buf.getvalue()))
    return out


@source("vggsound")
def vggsound_source(root: Path | None = None, train_list: Path | None = None, test_list: Path | None = None,
                    **_) -> Source:
    expected = ("VGGSound clips under <root> (any depth), named <youtube_id>_<start:06d>.mp4 (or <id>_<start>, "
                "<id>_<start:06d>_<end:06d>, <id>_<start_ms>_<end_ms>), and the official vggsound.csv in <root> "
                "or given with --train-list")
    root = require_dir(root, expected)
    csvs = [Path(p) for p in (train_list, test_list) if p is not None] or [root / "vggsound.csv"]
    if not csvs[0].is_file():
        raise MmvidError(f"{csvs[0]} not found; put the official vggsound.csv in --root or give it with --train-list")
    videos = index_videos(root)
    if not videos:
        raise MmvidError(f"no video files under {root}; expected {expected}")
    ex = Excluded()
    rows: dict[str, list[tuple[str, str, str, str | None]]] = {}  # name -> (label, split, line, file stem)
    unknown = []
    for path in csvs:
        for yid, start, label, split, line in parse_vggsound_csv(path):
            if label not in VGGSOUND_LABEL:
                unknown.append(f"{yid}_{start:06d} ({label})")
                continue
            stem = next((s for s in vggsound_stems(yid, start) if s in videos), None)
            rows.setdefault(f"{yid}_{start:06d}", []).append((label, split, line, stem))
    ex.add(unknown, f"label not among VGGSound's {len(VGGSOUND_CLASSES)} classes (data/stat.csv)",
           f"csv rows have a label not among VGGSound's {len(VGGSOUND_CLASSES)} classes")
    clash = {k for k, r in rows.items() if len({(y, s) for y, s, _, _ in r}) > 1}
    ex.add(sorted(clash), "listed twice with different labels or splits",
           "clips are listed twice with different labels or splits")
    absent = [k for k, r in rows.items() if r[0][3] is None]
    ex.add([k for k in absent if k not in clash], "in the csv, no video under --root", "clips of the csv have no video file")
    used = {r[0][3] for r in rows.values()}
    ex.add([v for v in videos if v not in used], "video under --root, in no csv row", "videos are in no csv row")
    clips = [ClipSpec(name=k, label=VGGSOUND_LABEL[r[0][0]], split=r[0][1], video=videos[r[0][3]])
             for k, r in rows.items() if r[0][3] is not None and k not in clash]
    names = ", ".join(str(p) for p in csvs)
    src = finish_source("vggsound", list(VGGSOUND_CLASSES), clips, VGGSOUND_PARAMS, ex, root,
                  [f"{sum(len(r) for r in rows.values()):,} csv rows from {names}; no val split: training holds "
                   "data.val_fraction of train out"])
    src.missing = [line for k in absent for _, _, line, _ in rows[k]]
    return src
