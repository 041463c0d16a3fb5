"""UCF-101: ``<root>/UCF-101/<Class>/v_*.avi`` and ``<root>/ucfTrainTestlist/``; precomputed frames in
``<root>/{frames,rawframes}/[<Class>/]<v_name>/``."""

from __future__ import annotations

from pathlib import Path

from mmvid.data.sources.base import ClipSpec, Source, source
from mmvid.data.sources.listing import Excluded, finish_source, read_lines, require_dir
from mmvid.errors import MmvidError

# RGB + optical flow, 3 frames each at 1 fps; UCF-101 videos are 25 fps (also the rate of frame folders).
# About half of UCF-101 has no audio track, and the paper uses RGB + flow: zero spectrograms, not skips.
UCF_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=3.0, n_fft=512, hop=353,
                  frames_fps=25.0, missing_audio="zeros")


def frame_folder(root: Path, cls: str, stem: str) -> Path | None:
    """The clip's precomputed frame folder in one of the common layouts, if any."""
    for base in ("frames", "rawframes"):
        for cand in (root / base / stem, root / base / cls / stem):
            if cand.is_dir():
                return cand
    return None


@source("ucf101")
def ucf101_source(root: Path | None = None, split: str | int | None = None, **_) -> Source:
    expected = "<root>/UCF-101/<Class>/v_*.avi and <root>/ucfTrainTestlist/ (classInd.txt, trainlist0N.txt, testlist0N.txt)"
    root = require_dir(root, expected)
    lists = root / "ucfTrainTestlist"
    if not (lists / "classInd.txt").is_file():
        raise MmvidError(f"{lists / 'classInd.txt'} not found; expected {expected}")
    s = str(split or 1)
    if s not in ("1", "2", "3"):
        raise MmvidError(f"--split {split!r} is not a UCF-101 split; choose 1, 2 or 3")
    video_root = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    class_names = []
    for n, line in enumerate(read_lines(lists / "classInd.txt"), 1):
        idx, _, name = line.partition(" ")
        if not idx.isdigit() or int(idx) != n or not name:
            raise MmvidError(f"{lists / 'classInd.txt'}:{n}: expected `{n} ClassName`, got {line!r}")
        class_names.append(name.strip())
    entries = [(line.split()[0], split_name) for split_name, fname in (("train", f"trainlist0{s}.txt"), ("test", f"testlist0{s}.txt"))
               for line in read_lines(lists / fname)]
    ex = Excluded()
    ex.add([rel for rel, _ in entries if not (video_root / rel).is_file()], "in the split list, no video file",
           f"videos of split {s} are missing under {video_root}")
    on_disk = {p.relative_to(video_root).as_posix() for p in video_root.glob("*/*.avi")}
    listed = {rel for rel, _ in entries}
    ex.add(sorted(on_disk - listed), "video in no split list", f"videos are in neither list of split {s}")
    clips = []
    for rel, split_name in entries:
        path = video_root / rel
        if not path.is_file():
            continue
        cls = rel.split("/")[0]
        if cls not in class_names:
            raise MmvidError(f"{rel} in split {s} has class folder {cls!r}, which is not in classInd.txt")
        frames = frame_folder(root, cls, path.stem)
        clips.append(ClipSpec(name=path.stem, label=class_names.index(cls), split=split_name, video=path, flow_dir=frames))
    params = dict(UCF_PARAMS)
    with_frames = sum(c.flow_dir is not None for c in clips)
    if clips and with_frames == len(clips):
        params["flow"] = "precomputed"
        note = f"flow: precomputed x_/y_ frames found for all {len(clips)} clips (--flow dis to compute it instead)"
    else:
        params["flow"] = "dis"
        note = f"flow: computed with OpenCV DIS ({with_frames}/{len(clips)} clips have precomputed frames; --flow precomputed to use them)"
    return finish_source("ucf101", class_names, clips, params, ex, root, [note])
