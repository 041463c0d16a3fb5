"""Sources for the real datasets, each in the layout it is distributed in.

=================  ==========================================================================
``cremad``         ``<root>/VideoFlash/*.flv`` (+ ``AudioWAV/*.wav``, used when present);
                   split: OGM-GE ``name,LABEL`` CSVs, else stratified ~9:1 from ``--seed``.
``kinetics-sounds`` mp4/mkv/webm/avi anywhere under ``<root>``; split: OGM-GE ``id,10,label_idx``
                   lists plus a class-name file next to them, else ``<root>/<class>/<clip>``.
``ave``             ``<root>/AVE/<VideoID>.mp4`` and the official ``<root>/{train,val,test}Set.txt``
                   (``Category&VideoID&Quality&StartTime&EndTime``); valSet is mmvid's val split.
``vggsound``       the official ``vggsound.csv`` (``youtube_id,start_seconds,label,split``, no header) and
                   clips anywhere under ``<root>`` named ``<id>_<start:06d>`` (or the other common names).
``ucf101``         ``<root>/UCF-101/<Class>/v_*.avi`` and ``<root>/ucfTrainTestlist/``;
                   precomputed frames in ``<root>/{frames,rawframes}/[<Class>/]<v_name>/``.
``folder``         ``<root>/<class>/<video>``; optional lists of ``<class>/<video>`` lines.
                   Classes: the class folders holding at least one video, sorted by name.
=================  ==========================================================================

Sources only list files; list entries without a file and files in no list are reported in
``Source.notes`` / ``Source.excluded`` (and in the prepare report), never silently dropped; the list lines
without a file also go to ``<cache>.missing.txt`` (``Source.missing``). Class lists that are names are
pinned in ``mmvid.data.class_lists``.
Dataset defaults (``Source.params``) follow the data protocol of the reference implementations.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable
from pathlib import Path

from mmvid.data.class_lists import AVE_CLASSES, KS_CLASSES, KS_OGM_GE_LISTS, VGGSOUND_CLASSES
from mmvid.data.sources import ClipSpec, IntensityScale, Source, source, stratified_split
from mmvid.errors import MmvidError

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv")
TEST_FRACTION = 0.1  # the ~9:1 split used when no lists are given

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
# RGB + optical flow, 3 frames each at 1 fps; UCF-101 videos are 25 fps (also the rate of frame folders).
# About half of UCF-101 has no audio track, and the paper uses RGB + flow: zero spectrograms, not skips.
UCF_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=3.0, n_fft=512, hop=353,
                  frames_fps=25.0, missing_audio="zeros")
FOLDER_PARAMS = dict(KS_MMVID_PARAMS)
# AVE as OGM-GE prepares it (pre-processing/AVE&CREMAD/video2frame-1fps.py: 10 frames at 1 fps, of which
# dataset/dataset.py takes 3; pre-processing/obtain_audio_spectrogram.py: librosa.load at its default
# 22,050 Hz (the sr=16000 argument is unused), tiled and cut to 160,000 samples = 7.26 s, nperseg 512,
# noverlap 353 = hop 159 -> 257 x 1004; here a centred STFT -> 257 x 1007). PMR's Audio-1004-SE is that shape.
AVE_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=22050, clip_seconds=160_000 / 22_050,
                  n_fft=512, hop=159)
# VGGSound as OGM-GE's loader reads it (dataset/VGGSoundDataset.py: 16 kHz, tiled to 10 s, a 5 s window,
# n_fft 256, hop 128 -> 129 x 626; main.py: --fps 1, --use_video_frames 3). Its window starts at a random
# point of the first 5 s on every read; the cache keeps the first 5 s.
VGGSOUND_PARAMS = dict(fps=1.0, num_frames=3, image_size=224, sample_rate=16000, clip_seconds=5.0, n_fft=256, hop=128)


# Named bundles of prepare parameters per data set (``mmvid prepare DATASET --preset NAME``), over the source's
# defaults; each reproduces the inputs of one reference implementation (docs/methods.md, "Reference protocol (data)").
# CREMA-D's frames as the references read them: native 480 x 360, through OpenCV's quality-95 JPEG, decoded by
# PyAV, whose frames equal OpenCV's exactly (decord's differ after the first on CREMA-D's VP6: 0.1 grey levels on
# average, up to 33 at a few pixels; tests/reference/test_reference_inputs.py).
_CREMAD_NATIVE = dict(frame_size="short-side", image_size=360, frame_aspect=4 / 3, jpeg_quality=95, frame_anchor="start",
                      decoder="pyav")
PRESETS: dict[str, dict[str, dict]] = {
    "cremad": {
        "mmvid": {},
        # OGM-GE: one frame, the first of its 1-fps folder (video_preprocessing.py keeps frame k * int(fps));
        # the audio of the librosa it ran in 2022 (reflect padding, kaiser_best resampling of the 16 kHz wav).
        "ogm-ge": dict(_CREMAD_NATIVE, num_frames=1, frame_select="ogm-ge", stft_pad="reflect", resample="kaiser_best"),
        # Remix (Data Remixing): two frames, at 0 s and 1 s of a 1-fps folder; librosa >= 0.10's audio.
        "remix": dict(_CREMAD_NATIVE, num_frames=2, frame_select="remix"),
    },
    # the default is OGM-GE's (KS_PARAMS); mmvid's own inputs undo each of its settings
    "kinetics-sounds": {"ogm-ge": {}, "mmvid": dict(KS_MMVID_PARAMS, frame_select="uniform", frame_size="square",
                                                    frame_aspect=4 / 3, jpeg_quality=0, audio_feature="stft",
                                                    decoder="decord")},
}


def preset_params(dataset: str, preset: str | None) -> dict:
    """The prepare parameters ``--preset`` sets for ``dataset`` (over its source's defaults); one line when
    the data set has no such preset."""
    if preset is None:
        return {}
    known = PRESETS.get(dataset, {})
    if preset not in known:
        have = f"{dataset}'s presets: {', '.join(known)}" if known else f"{dataset} has no presets"
        raise MmvidError(f"--preset {preset!r} is not valid; {have}")
    return dict(known[preset])


# ----------------------------------------------------------------------------- helpers


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, tolerant of a UTF-8 BOM and CRLF line ends (as distributed)."""
    path = Path(path)
    if not path.is_file():
        raise MmvidError(f"split list {path} not found")
    return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def _require_dir(path: Path | None, expected: str) -> Path:
    if path is None:
        raise MmvidError(f"--root is required; expected {expected}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MmvidError(f"--root {path} is not a folder; expected {expected}")
    return path


def _lists_given(train_list: Path | None, test_list: Path | None) -> bool:
    if (train_list is None) != (test_list is None):
        raise MmvidError("give both --train-list and --test-list, or neither (for a seeded ~9:1 split)")
    return train_list is not None


def index_videos(root: Path, exts: Iterable[str] = VIDEO_EXTS) -> dict[str, Path]:
    """Every video file under ``root`` by its stem (first one wins, sorted for determinism)."""
    exts = tuple(exts)
    out: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() in exts and p.is_file():
            out.setdefault(p.stem, p)
    return out


def _summary(names: list[str], what: str) -> str:
    head = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return f"{len(names)} {what}; skipped ({head})"


class _Excluded:
    """Collects list entries without a file and files in no list, for notes and the JSON report."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.notes: list[str] = []

    def add(self, names: list[str], reason: str, what: str) -> None:
        if names:
            self.items += [{"name": n, "reason": reason} for n in names]
            self.notes.append(_summary(names, what))


def _finish(dataset: str, class_names: list[str], clips: list[ClipSpec], params: dict, ex: _Excluded,
            root: Path, notes: list[str] | None = None) -> Source:
    if not clips:
        raise MmvidError(f"no {dataset} clips found under {root} that are in the split"
                         + (f" ({ex.notes[0]})" if ex.notes else "") + "; check --root and the split lists")
    notes = (notes or []) + ex.notes
    if not any(c.split == "test" for c in clips):
        notes.append("no clip is in the test split (too few clips per class for a ~9:1 split?); give split lists")
    return Source(dataset, class_names, clips, params=dict(params), notes=notes, excluded=ex.items)


def _seeded_splits(labels: list[int], seed: int) -> list[str]:
    return stratified_split(labels, TEST_FRACTION, seed)


# ----------------------------------------------------------------------------- CREMA-D


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
    root = _require_dir(root, expected)
    video_dir, wav_dir = root / "VideoFlash", root / "AudioWAV"
    videos = {p.stem: p for p in sorted(video_dir.glob("*.flv"))} if video_dir.is_dir() else {}
    if not videos:
        raise MmvidError(f"no {video_dir}/*.flv found; expected {expected}")
    ex = _Excluded()
    if _lists_given(train_list, test_list):
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
        entries = list(zip(names, labels, _seeded_splits(labels, seed)))
    clips = []
    for name, label, split in entries:
        wav = wav_dir / f"{name}.wav"
        clips.append(ClipSpec(name=name, label=label, split=split, video=videos[name], audio=wav if wav.is_file() else None,
                              level=cremad_level(name)))
    notes = [] if wav_dir.is_dir() else ["no AudioWAV folder: audio is decoded from the flv files"]
    src = _finish("cremad", CREMAD_CLASSES, clips, CREMAD_PARAMS, ex, root, notes)
    src.intensity = CREMAD_INTENSITY
    return src


# ----------------------------------------------------------------------------- folder tree


def _entry_kind(path: Path) -> str:
    """What ``path`` is once links are followed: file | dir | loop | broken | other | unreadable."""
    try:
        mode = path.stat().st_mode
    except OSError as e:
        return {errno.ELOOP: "loop", errno.ENOENT: "broken"}.get(e.errno, "unreadable")
    if stat.S_ISDIR(mode):
        # a link to a folder that contains it (e.g. <root>/all -> <root>) would list the tree again
        if path.is_symlink() and path.parent.resolve().is_relative_to(path.resolve()):
            return "loop"
        return "dir"
    return "file" if stat.S_ISREG(mode) else "other"


def _listdir(folder: Path, ex: _Excluded, name: str) -> list[Path]:
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        ex.add([name], f"cannot read the folder: {e.strerror}", f"folders cannot be read ({e.strerror})")
        return []


# (reason in the report, note text) for each input the class-folder scan skips
_SKIP = {
    "top": ("video at the top level of --root, not in a <class>/ folder",
            "videos are at the top level of --root, not in a <class>/ folder (move each into its class folder)"),
    "nested": ("folder inside a class folder: only <root>/<class>/<video> files are read",
               "folders inside class folders are not read (the layout is <root>/<class>/<video>)"),
    "dir_video": ("a folder named like a video, not a video file",
                  "folders are named like videos (only files are videos)"),
    "empty": ("class folder with no video files: not a class",
              "class folders have no video files and are not classes (nothing to learn from)"),
    "loop": ("symlink loop", "entries are symlink loops"),
    "broken": ("broken symlink: its target does not exist", "entries are broken symlinks"),
    "other": ("not a regular file", "video names are not regular files"),
    "unreadable": ("cannot be read (permissions?)", "entries cannot be read (permissions?)"),
    "duplicate": ("same <class>/<name> as another video of the class (the first, sorted by name, is used)",
                  "videos share a <class>/<name> with another video of the class"),
}


def scan_class_tree(root: Path) -> tuple[list[Path], _Excluded]:
    """Video files at ``<root>/<class>/<video>`` (sorted), and every other entry that looks like input,
    each reported by its path under ``root`` with the reason: videos at the top level, folders inside a
    class folder (one named ``x.mp4`` too), class folders without videos, symlink loops, broken links,
    two videos with one ``<class>/<stem>``. Only these two levels are read, so no link makes it recurse.
    Other files (lists, READMEs) are not input and are passed over."""
    ex = _Excluded()
    skipped: dict[str, list[str]] = {k: [] for k in _SKIP}
    files: list[Path] = []
    for top in _listdir(root, ex, "."):
        kind = _entry_kind(top)
        if kind == "file":
            if top.suffix.lower() in VIDEO_EXTS:
                skipped["top"].append(top.name)
            continue
        if kind != "dir":
            skipped[kind].append(top.name)
            continue
        videos: dict[str, Path] = {}
        for p in _listdir(top, ex, top.name):
            rel, kind = f"{top.name}/{p.name}", _entry_kind(p)
            if kind == "dir":
                skipped["dir_video" if p.suffix.lower() in VIDEO_EXTS else "nested"].append(rel)
            elif p.suffix.lower() not in VIDEO_EXTS:
                if kind in ("loop", "broken"):
                    skipped[kind].append(rel)
            elif kind != "file":
                skipped[kind].append(rel)
            elif p.stem in videos:
                skipped["duplicate"].append(rel)
            else:
                videos[p.stem] = p
        if videos:
            files += videos.values()
        else:
            skipped["empty"].append(top.name)
    for kind, names in skipped.items():
        ex.add(names, *_SKIP[kind])
    return files, ex


def _folder_clips(dataset: str, root: Path, train_list: Path | None, test_list: Path | None, seed: int,
                  params: dict) -> Source:
    """``<root>/<class>/<video>``; lists hold ``<class>/<video>`` (extension optional, extra fields ignored).

    Classes are the class folders with at least one video, in sorted order (label = index); a folder
    without videos is reported, not made a class, since a class without data cannot be learned.
    """
    expected = "<root>/<class>/<video> folders (e.g. <root>/dog/clip1.mp4)"
    files, ex = scan_class_tree(root)
    if not files:
        raise MmvidError(f"no videos found in {root}/<class>/; expected {expected}"
                         + (f" ({ex.notes[0]})" if ex.notes else ""))
    class_names = sorted({p.parent.name for p in files})
    by_key = {f"{p.parent.name}/{p.stem}": p for p in files}
    if _lists_given(train_list, test_list):
        entries = []
        for split, lst in (("train", train_list), ("test", test_list)):
            for line in read_lines(lst):
                rel = Path(line.replace(",", " ").split()[0])
                entries.append((f"{rel.parent.as_posix()}/{rel.stem}" if rel.parent.name else rel.stem, split))
        ex.add([k for k, _ in entries if k not in by_key], "in a split list, no file under --root",
               "entries of the split lists have no video (lines must read <class>/<video>)")
        listed = {k for k, _ in entries}
        ex.add([k for k in by_key if k not in listed], "file under --root, in no split list",
               "videos are in neither split list")
        entries = [e for e in entries if e[0] in by_key]
    else:
        keys = list(by_key)
        entries = list(zip(keys, _seeded_splits([class_names.index(k.split("/")[0]) for k in keys], seed)))
    clips = [ClipSpec(name=k, label=class_names.index(k.split("/")[0]), split=s, video=by_key[k]) for k, s in entries]
    return _finish(dataset, class_names, clips, params, ex, root)


@source("folder")
def folder_source(root: Path | None = None, train_list: Path | None = None, test_list: Path | None = None,
                  seed: int = 0, **_) -> Source:
    root = _require_dir(root, "<root>/<class>/<video> folders")
    return _folder_clips("folder", root, train_list, test_list, seed, FOLDER_PARAMS)


# ----------------------------------------------------------------------------- Kinetics-Sounds


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
    import hashlib

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
    root = _require_dir(root, expected)
    if not _lists_given(train_list, test_list):
        return _folder_clips("kinetics-sounds", root, None, None, seed, KS_PARAMS)
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
    ex = _Excluded()
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
    src = _finish("kinetics-sounds", class_names, clips, KS_PARAMS, ex, root, notes)
    src.missing = [line for n, _, _, line in entries if n not in videos]
    return src


# ----------------------------------------------------------------------------- AVE

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
    root = _require_dir(root, expected)
    absent = [name for _, name in AVE_LISTS if not (root / name).is_file()]
    if absent:
        raise MmvidError(f"{', '.join(absent)} not found in {root}; expected {expected}")
    video_dir = root / "AVE" if (root / "AVE").is_dir() else root
    videos = index_videos(video_dir)
    rows: dict[str, list[tuple[int, str, str]]] = {}  # video id -> (label, split, line) of each line naming it
    for split, name in AVE_LISTS:
        for vid, label, line in parse_ave_list(root / name):
            rows.setdefault(vid, []).append((label, split, line))
    ex = _Excluded()
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
    src = _finish("ave", list(AVE_CLASSES), clips, AVE_PARAMS, ex, root, notes)
    src.missing = [line for v in absent_ids for _, _, line in rows[v]]
    return src


# ----------------------------------------------------------------------------- VGGSound

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
    import csv
    import io

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
    root = _require_dir(root, expected)
    csvs = [Path(p) for p in (train_list, test_list) if p is not None] or [root / "vggsound.csv"]
    if not csvs[0].is_file():
        raise MmvidError(f"{csvs[0]} not found; put the official vggsound.csv in --root or give it with --train-list")
    videos = index_videos(root)
    if not videos:
        raise MmvidError(f"no video files under {root}; expected {expected}")
    ex = _Excluded()
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
    src = _finish("vggsound", list(VGGSOUND_CLASSES), clips, VGGSOUND_PARAMS, ex, root,
                  [f"{sum(len(r) for r in rows.values()):,} csv rows from {names}; no val split: training holds "
                   "data.val_fraction of train out"])
    src.missing = [line for k in absent for _, _, line, _ in rows[k]]
    return src


# ----------------------------------------------------------------------------- UCF-101


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
    root = _require_dir(root, expected)
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
    ex = _Excluded()
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
    return _finish("ucf101", class_names, clips, params, ex, root, [note])
