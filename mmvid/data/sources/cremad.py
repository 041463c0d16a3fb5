"""CREMA-D: ``<root>/VideoFlash/*.flv`` (+ ``AudioWAV/*.wav``, used when present); split: OGM-GE's
``name,LABEL`` CSVs, else stratified ~9:1 from ``--seed``. Each clip's emotion level (from its name) is its
intensity (MS-Mix's SAL target)."""

from __future__ import annotations

from pathlib import Path

from mmvid.data.sources.base import ClipSpec, IntensityScale, Source, source
from mmvid.data.sources.listing import Excluded, finish_source, lists_given, read_lines, require_dir, seeded_splits
from mmvid.errors import MmvidError

CREMAD_CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]  # OGM-GE order (its stat.csv)
# The emotion level, the fourth field of a CREMA-D name (1001_IEO_ANG_HI): Low, Medium, High, Unspecified (the
# dataset's README). Only the sentence IEO was acted at LO/MD/HI; the other eleven, and every NEU clip, are XX.
CREMAD_LEVELS = ["XX", "LO", "MD", "HI"]
# The SAL target of each level, in [0, 1] like MS-Mix's |y| / 3. LO/MD/HI: the dataset's own numbers for the
# displayed level on its raters' 0-100 intensity scale (README, finishedResponses "dispLevel": 20, 50, 80).
# XX: the actor's own, unspecified level; the raters' mean perceived intensity of the XX clips of the five
# emotions lies between that of LO and MD clips and nearest MD (processedResults/summaryTable.csv, checked
# by tests/test_msmix_intensity.py), so MD's 0.5. NEU: no emotion, 0 at every level, as MS-Mix's neutral y = 0.
CREMAD_LEVEL_TARGET = {"XX": 0.5, "LO": 0.2, "MD": 0.5, "HI": 0.8}
CREMAD_INTENSITY = IntensityScale(
    levels=list(CREMAD_LEVELS),
    table=[[0.0 if c == "NEU" else CREMAD_LEVEL_TARGET[lv] for lv in CREMAD_LEVELS] for c in CREMAD_CLASSES])
# Paper protocol (OGM-GE loader): 1 fps, 2 frames; 22,050 Hz tiled to 3 s; n_fft 512, hop 353 -> 257 x 188.
CREMAD_PARAMS = dict(fps=1.0, num_frames=2, image_size=224, sample_rate=22050, clip_seconds=3.0, n_fft=512, hop=353)


def parse_cremad_list(path: Path) -> list[tuple[str, int]]:
    """OGM-GE ``name,LABEL`` lines -> (name, class index in ``CREMAD_CLASSES``)."""
    out = []
    for n, line in enumerate(read_lines(path), 1):
        parts = [s.strip() for s in line.split(",")]
        if len(parts) < 2 or parts[1] not in CREMAD_CLASSES:
            raise MmvidError(f"{path}:{n}: expected `clip,LABEL` with LABEL in {', '.join(CREMAD_CLASSES)}, got {line!r}")
        out.append((parts[0], CREMAD_CLASSES.index(parts[1])))
    return out


def cremad_level(name: str) -> str:
    """The emotion level of a CREMA-D clip name (``1001_IEO_ANG_HI`` -> ``HI``); a name without one of the
    four codes as its fourth field counts as unspecified (``XX``)."""
    parts = name.split("_")
    return parts[3] if len(parts) > 3 and parts[3] in CREMAD_LEVELS else "XX"


@source("cremad")
def cremad_source(root: Path | None = None, train_list: Path | None = None, test_list: Path | None = None,
                  seed: int = 0, **_) -> Source:
    expected = "the official CREMA-D layout <root>/VideoFlash/*.flv (and optionally <root>/AudioWAV/*.wav)"
    root = require_dir(root, expected)
    video_dir, wav_dir = root / "VideoFlash", root / "AudioWAV"
    videos = {p.stem: p for p in sorted(video_dir.glob("*.flv"))} if video_dir.is_dir() else {}
    if not videos:
        raise MmvidError(f"no {video_dir}/*.flv found; expected {expected}")
    ex = Excluded()
    if lists_given(train_list, test_list):
        entries = [(n, y, s) for s, lst in (("train", train_list), ("test", test_list)) for n, y in parse_cremad_list(lst)]
        ex.add([n for n, _, _ in entries if n not in videos], "in a split list, no file in VideoFlash",
               "clips of the split lists have no VideoFlash/*.flv")
        listed = {n for n, _, _ in entries}
        ex.add([n for n in videos if n not in listed], "file in VideoFlash, in no split list",
               "VideoFlash files are in neither split list")
        entries = [e for e in entries if e[0] in videos]
    else:
        names = [n for n in videos if len(n.split("_")) > 2 and n.split("_")[2] in CREMAD_CLASSES]
        ex.add([n for n in videos if n not in names], "no emotion code in the file name",
               "VideoFlash files have no emotion code as their third name field")
        labels = [CREMAD_CLASSES.index(n.split("_")[2]) for n in names]
        entries = list(zip(names, labels, seeded_splits(labels, seed)))
    clips = []
    for name, label, split in entries:
        wav = wav_dir / f"{name}.wav"
        clips.append(ClipSpec(name=name, label=label, split=split, video=videos[name], audio=wav if wav.is_file() else None,
                              level=cremad_level(name)))
    notes = [] if wav_dir.is_dir() else ["no AudioWAV folder: audio is decoded from the flv files"]
    src = finish_source("cremad", CREMAD_CLASSES, clips, CREMAD_PARAMS, ex, root, notes)
    src.intensity = CREMAD_INTENSITY
    return src
