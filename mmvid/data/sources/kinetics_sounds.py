"""Kinetics-Sounds: mp4/mkv/webm/avi anywhere under ``<root>``; split: OGM-GE's ``id,10,label_idx`` lists
plus a class-name file next to them (else the pinned class list of ``mmvid.data.class_lists``), or
``<root>/<class>/<clip>`` folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from mmvid.data.class_lists import KS_CLASSES, KS_OGM_GE_LISTS
from mmvid.data.sources.base import ClipSpec, Source, source
from mmvid.data.sources.listing import (
    Excluded,
    finish_source,
    folder_clips,
    index_videos,
    lists_given,
    read_lines,
    require_dir,
)
from mmvid.errors import MmvidError

# mmvid's own Kinetics-Sounds inputs (preset ``mmvid``): 1 fps over the 10 s clips, 3 frames at the centres of
# 3 equal segments (1.5, 5.5, 8.5 s), 224 x 224; librosa log-STFT of 10 s at 16 kHz (n_fft 512, hop 353 -> 257 x 454).
KS_MMVID_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=16000, clip_seconds=10.0, n_fft=512, hop=353)
# OGM-GE's Kinetics-Sounds inputs, the default (docs/methods.md, "Reference protocol (data)"): its 1-fps folders
# (video2frame-1fps.py: the frame at the centre of each second, written by imageio as a quality-75 JPEG) and
# dataset/dataset.py's files t = 3i + 1 (the seconds 0, 3, 6, i.e. 0.5, 3.5 and 6.5 s), kept at 640 x 360 for
# data.crop=reference to crop from; KineticSound/process_audio.py's 1024 x 128 Kaldi filterbank of the 16 kHz wav.
KS_PARAMS = dict(KS_MMVID_PARAMS, frame_select="ogm-ge", frame_anchor="centre", frame_size="short-side",
                 image_size=360, frame_aspect=16 / 9, jpeg_quality=75, audio_feature="fbank", n_mels=128,
                 fbank_frames=1024, decoder="pyav")


def parse_class_names(path: Path) -> list[str]:
    """One class a line, either ``name`` or ``index name`` (indices 0-based and in order)."""
    names = []
    for n, line in enumerate(read_lines(path)):
        head, _, rest = line.partition(" ")
        if rest and head.isdigit():
            if int(head) != n:
                raise MmvidError(f"{path}: line {n + 1} has index {head}, expected {n} (0-based, in order)")
            line = rest.strip()
        names.append(line)
    return names


def find_class_file(*folders: Path) -> Path | None:
    for folder in folders:
        found = sorted(p for p in folder.glob("*.txt") if "class" in p.name.lower())
        if found:
            return found[0]
    return None


def parse_ks_list(path: Path, num_classes: int, hint: str = "") -> list[tuple[str, int, str]]:
    """OGM-GE ``youtubeid_start_end,10,label_idx`` lines -> (clip id, label, the line)."""
    out = []
    for n, line in enumerate(read_lines(path), 1):
        parts = [s.strip() for s in line.split(",")]
        if len(parts) < 2 or not parts[-1].isdigit() or int(parts[-1]) >= num_classes:
            raise MmvidError(f"{path}:{n}: expected `clip_id,10,label_idx` with label_idx < {num_classes}, "
                             f"got {line!r}{hint}")
        out.append((parts[0], int(parts[-1]), line))
    return out


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def ks_list_note(path: Path, split: str, n_lines: int) -> str:
    """Which split a list is: OGM-GE's (the paper's) when its bytes are, else how it differs in size."""
    known = KS_OGM_GE_LISTS.get(file_sha256(path))
    if known:
        return f"{split} list {path.name} is OGM-GE's {known[0]} ({known[1]:,} lines, the split of the paper)"
    ref = {"train": 14_799, "test": 2_597}[split]
    return f"{split} list {path} is not OGM-GE's (the paper's) {'my_' + split}.txt: {n_lines:,} lines against {ref:,}"


@source("kinetics-sounds")
def kinetics_sounds_source(root: Path | None = None, train_list: Path | None = None, test_list: Path | None = None,
                           seed: int = 0, **_) -> Source:
    expected = ("video files named <clip_id>.mp4|mkv|webm under <root> with --train-list/--test-list "
                "(`clip_id,10,label_idx`; a *class*.txt file next to them overrides the pinned 31 class names), "
                "or <root>/<class>/<clip> folders")
    root = require_dir(root, expected)
    if not lists_given(train_list, test_list):
        return folder_clips("kinetics-sounds", root, None, None, seed, KS_PARAMS)
    class_file = find_class_file(Path(train_list).parent, root)
    if class_file is not None:
        class_names, hint = parse_class_names(class_file), f" (classes from {class_file})"
        notes = [f"class names from {class_file}"]
    else:
        class_names = list(KS_CLASSES)
        hint = (f"; the pinned class list has OGM-GE's {len(KS_CLASSES)} classes: lists with more (32 or 34 in some "
                f"repositories) need their class names in a *class*.txt file next to {Path(train_list).name}")
        notes = [f"class names: mmvid's pinned {len(KS_CLASSES)} (alphabetical, inferred; see mmvid/data/class_lists.py); "
                 "a *class*.txt file next to the lists overrides them"]
    videos = index_videos(root)
    if not videos:
        raise MmvidError(f"no video files under {root}; expected {expected}")
    ex = Excluded()
    entries = []
    for s, lst in (("train", train_list), ("test", test_list)):
        rows = parse_ks_list(lst, len(class_names), hint)
        notes.append(ks_list_note(Path(lst), s, len(rows)))
        entries += [(n, y, s, line) for n, y, line in rows]
    ex.add([n for n, _, _, _ in entries if n not in videos], "in a split list, no video under --root",
           "clips of the split lists have no video file")
    listed = {e[0] for e in entries}
    ex.add([n for n in videos if n not in listed], "video under --root, in no split list", "videos are in neither split list")
    clips = [ClipSpec(name=n, label=y, split=s, video=videos[n]) for n, y, s, _ in entries if n in videos]
    src = finish_source("kinetics-sounds", class_names, clips, KS_PARAMS, ex, root, notes)
    src.missing = [line for n, _, _, line in entries if n not in videos]
    return src
