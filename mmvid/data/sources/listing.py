"""What the real sources share to list a data set's files: split-list lines, the video index, the
``<root>/<class>/<video>`` scan, and the report of what was left out.

Sources only list files; list entries without a file and files in no list are reported in
``Source.notes`` / ``Source.excluded`` (and in the prepare report), never silently dropped.
"""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterable
from pathlib import Path

from mmvid.data.sources.base import ClipSpec, Source, stratified_split
from mmvid.errors import MmvidError

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".flv", ".mov", ".m4v", ".mpg", ".mpeg", ".wmv")
TEST_FRACTION = 0.1  # the ~9:1 split used when no lists are given


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a text file, tolerant of a UTF-8 BOM and CRLF line ends (as distributed)."""
    path = Path(path)
    if not path.is_file():
        raise MmvidError(f"split list {path} not found")
    return [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]


def require_dir(path: Path | None, expected: str) -> Path:
    if path is None:
        raise MmvidError(f"--root is required; expected {expected}")
    path = Path(path).expanduser()
    if not path.is_dir():
        raise MmvidError(f"--root {path} is not a folder; expected {expected}")
    return path


def lists_given(train_list: Path | None, test_list: Path | None) -> bool:
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


class Excluded:
    """Collects list entries without a file and files in no list, for notes and the JSON report."""

    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []
        self.notes: list[str] = []

    def add(self, names: list[str], reason: str, what: str) -> None:
        if names:
            self.items += [{"name": n, "reason": reason} for n in names]
            self.notes.append(_summary(names, what))


def finish_source(dataset: str, class_names: list[str], clips: list[ClipSpec], params: dict, ex: Excluded,
                  root: Path, notes: list[str] | None = None) -> Source:
    """The :class:`Source` of a listing, with what was left out in its notes; none of its clips in the split
    is one line naming ``root``."""
    if not clips:
        raise MmvidError(f"no {dataset} clips found under {root} that are in the split"
                         + (f" ({ex.notes[0]})" if ex.notes else "") + "; check --root and the split lists")
    notes = (notes or []) + ex.notes
    if not any(c.split == "test" for c in clips):
        notes.append("no clip is in the test split (too few clips per class for a ~9:1 split?); give split lists")
    return Source(dataset, class_names, clips, params=dict(params), notes=notes, excluded=ex.items)


def seeded_splits(labels: list[int], seed: int) -> list[str]:
    return stratified_split(labels, TEST_FRACTION, seed)


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


def _listdir(folder: Path, ex: Excluded, name: str) -> list[Path]:
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


def scan_class_tree(root: Path) -> tuple[list[Path], Excluded]:
    """Video files at ``<root>/<class>/<video>`` (sorted), and every other entry that looks like input,
    each reported by its path under ``root`` with the reason: videos at the top level, folders inside a
    class folder (one named ``x.mp4`` too), class folders without videos, symlink loops, broken links,
    two videos with one ``<class>/<stem>``. Only these two levels are read, so no link makes it recurse.
    Other files (lists, READMEs) are not input and are passed over."""
    ex = Excluded()
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


def folder_clips(dataset: str, root: Path, train_list: Path | None, test_list: Path | None, seed: int,
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
    if lists_given(train_list, test_list):
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
        entries = list(zip(keys, seeded_splits([class_names.index(k.split("/")[0]) for k in keys], seed)))
    clips = [ClipSpec(name=k, label=class_names.index(k.split("/")[0]), split=s, video=by_key[k]) for k, s in entries]
    return finish_source(dataset, class_names, clips, params, ex, root)
