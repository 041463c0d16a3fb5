"""AVE: ``<root>/AVE/<VideoID>.mp4`` and the official ``<root>/{train,val,test}Set.txt``
(``Category&VideoID&Quality&StartTime&EndTime``); valSet is mmvid's val split."""

from __future__ import annotations

from pathlib import Path

from mmvid.data.class_lists import AVE_CLASSES
from mmvid.data.sources.base import ClipSpec, Source, source
from mmvid.data.sources.listing import Excluded, finish_source, index_videos, read_lines, require_dir
from mmvid.errors import MmvidError

# AVE as OGM-GE prepares it (pre-processing/AVE&CREMAD/video2frame-1fps.py: 10 frames at 1 fps, of which
# dataset/dataset.py takes 3; pre-processing/obtain_audio_spectrogram.py: librosa.load at its default
# 22,050 Hz (the sr=16000 argument is unused), tiled and cut to 160,000 samples = 7.26 s, nperseg 512,
# noverlap 353 = hop 159 -> 257 x 1004; here a centred STFT -> 257 x 1007). PMR's Audio-1004-SE is that shape.
AVE_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=160_000 / 22_050,
                  n_fft=512, hop=159)

AVE_LISTS = (("train", "trainSet.txt"), ("val", "valSet.txt"), ("test", "testSet.txt"))
AVE_HEADER = "category&videoid&quality&starttime&endtime"  # the first line of some copies' files


def parse_ave_list(path: Path) -> list[tuple[str, int, str]]:
    """Official ``Category&VideoID&Quality&StartTime&EndTime`` lines -> (video id, label in ``AVE_CLASSES``,
    the line). The event's start and end are not used: the clip is the whole 10 s video, as in OGM-GE and PMR."""
    out = []
    for n, line in enumerate(read_lines(path), 1):
        if n == 1 and line.replace(" ", "").lower() == AVE_HEADER:
            continue
        parts = [p.strip() for p in line.split("&")]
        if len(parts) != 5 or not parts[1] or parts[0] not in AVE_CLASSES:
            raise MmvidError(f"{path}:{n}: expected `Category&VideoID&Quality&StartTime&EndTime` with one of AVE's "
                             f"28 categories (e.g. `Church bell&RUhOCu3LNXM&good&0&10`), got {line!r}")
        out.append((parts[1], AVE_CLASSES.index(parts[0]), line))
    return out


@source("ave")
def ave_source(root: Path | None = None, **_) -> Source:
    expected = ("the official AVE_Dataset folder: <root>/AVE/<VideoID>.mp4 and <root>/trainSet.txt, valSet.txt, "
                "testSet.txt (`Category&VideoID&Quality&StartTime&EndTime`)")
    root = require_dir(root, expected)
    absent = [name for _, name in AVE_LISTS if not (root / name).is_file()]
    if absent:
        raise MmvidError(f"{', '.join(absent)} not found in {root}; expected {expected}")
    video_dir = root / "AVE" if (root / "AVE").is_dir() else root
    videos = index_videos(video_dir)
    rows: dict[str, list[tuple[int, str, str]]] = {}  # video id -> (label, split, line) of each line naming it
    for split, name in AVE_LISTS:
        for vid, label, line in parse_ave_list(root / name):
            rows.setdefault(vid, []).append((label, split, line))
    ex = Excluded()
    # 45 of AVE's 4,097 videos hold two or more events of different categories (4,143 lines): as a clip
    # label that is ambiguous, and OGM-GE's loader drops a video listed twice in a split too.
    several = {v for v, r in rows.items() if len({y for y, _, _ in r}) > 1}
    ex.add(sorted(several), "listed with several categories (a video with several events): its label is ambiguous",
           "videos are listed with several categories (several events in one video)")
    crossing = {v for v, r in rows.items() if v not in several and len({s for _, s, _ in r}) > 1}
    ex.add(sorted(crossing), "listed in more than one split", "videos are listed in more than one split")
    ambiguous = several | crossing
    absent_ids = [v for v in rows if v not in videos]
    ex.add([v for v in absent_ids if v not in ambiguous], "in a split list, no video in AVE/",
           f"clips of the split lists have no video in {video_dir}")
    ex.add([v for v in videos if v not in rows], "video in AVE/, in no split list", "videos are in no split list")
    clips = [ClipSpec(name=v, label=r[0][0], split=r[0][1], video=videos[v]) for v, r in rows.items()
             if v in videos and v not in ambiguous]
    notes = [f"{sum(len(r) for r in rows.values()):,} list lines name {len(rows):,} videos"]
    src = finish_source("ave", list(AVE_CLASSES), clips, AVE_PARAMS, ex, root, notes)
    src.missing = [line for v in absent_ids for _, _, line in rows[v]]
    return src
