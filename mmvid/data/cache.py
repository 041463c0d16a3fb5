"""The HDF5 cache, schema version 2: decoded once by ``prepare``, read by every later command.

Layout (N clips, T frames, S image size, F x L spectrogram bins x steps)::

    /frames       uint8   (N, T, S, S, 3)  RGB, chunk = one clip
    /flow         uint8   (N, T, S, S, 2)  optional; u, v quantised q = round(f * 255 / 2B) + 128, B = flow_bound
                                           (128 = zero motion, the denseflow JPEG convention; mmvid.data.flow)
    /spectrogram  float16 (N, F, L)        log(|STFT| + 1e-7)
    /labels       int64   (N,)
    /names        bytes   (N,)             UTF-8, fixed length (variable-length strings cannot carry checksums)
    /split        int8    (N,)             index into attrs["split_names"]
    /status       int8    (N,)             0 pending, 1 ok, 2 failed (failed clips are in the JSON report)
    /intensity    int8    (N,)             optional: each clip's intensity level, an index into
                                           attrs["intensity_levels"] (CREMA-D: XX, LO, MD, HI from the name);
                                           attrs["intensity_table"] (C, L): the target in [0, 1] of each class
                                           at each level (MS-Mix's SAL target; mmvid.data.sources.IntensityScale)

Attributes describe the cache: format, version, dataset, class_names, split_names, modalities,
every prepare parameter (fps, num_frames, image_size, sample_rate, clip_seconds, n_fft, hop,
window, normalisation, decoder, library versions), counts and ``complete``. A cache is written to
``<name>.h5.partial`` and renamed only when complete, so a crash never leaves a file that later
commands read as finished; re-running the same ``prepare`` resumes the partial file.

Damage is caught, never trained on. Version 2 writes every dataset chunked with a Fletcher-32
checksum per chunk, so HDF5 refuses to return a flipped byte of stored data (h5py raises OSError);
version 1 caches (no checksums) still load. Every reader turns what a damaged file raises (a failed
checksum, an unreadable B-tree or object header, labels or splits out of range, shapes that disagree
with the attributes, NaN/inf values) into one :class:`CacheDamaged` line that names the cache and the
``mmvid prepare ... --force`` that rebuilds it. Opening a cache (:func:`read_info`) does the cheap
checks; :func:`verify_cache` (``prepare --info``) reads every chunk.

This module reads and checks caches; :mod:`mmvid.data.cache_writer` writes them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmvid.data.features import audio_shape
from mmvid.data.params import frame_hw
from mmvid.errors import MmvidError
from mmvid.workspace import workspace_dir

FORMAT = "mmvid-cache"
VERSION = 2  # 2: per-chunk Fletcher-32 checksums on every dataset; 1: none
READABLE_VERSIONS = (1, 2)
PENDING, OK, FAILED = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")
# Which cache dataset feeds which model modality (the cache names what is stored, the model what it means).
CACHE_KEY = {"audio": "spectrogram", "video": "frames", "flow": "flow"}


class CacheDamaged(MmvidError):
    """A cache that cannot be trusted; the message is one line ending in the command that rebuilds it.

    A DataLoader worker's exception is re-raised in the main process as ``CacheDamaged(text)``, where
    the text carries the worker's whole traceback; the constructor keeps only the original line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{__name__}.{type(self).__qualname__}: "
        if message.startswith("Caught ") and marker in message:
            message = message.rstrip().rsplit(marker, 1)[1].splitlines()[0]
        super().__init__(message)


def rebuild_command(path: Path, dataset: str | None = None) -> str:
    """``mmvid prepare DATASET [--name NAME] [-w WORKSPACE] [--shard I/N] --force`` for the cache at ``path``."""
    path = Path(path)
    name = path.name[:-3] if path.name.endswith(".h5") else path.stem
    shard = re.fullmatch(r"(.+)\.shard-(\d+)-of-(\d+)", name)  # a shard of mmvid.data.shards: rebuild that shard
    if shard:
        name = shard[1]
    cmd = f"mmvid prepare {dataset or name}"
    if dataset and dataset != name:
        cmd += f" --name {name}"
    if path.parent.name == "caches" and path.parent.parent != workspace_dir():
        cmd += f" -w {path.parent.parent}"
    return cmd + (f" --shard {shard[2]}/{shard[3]}" if shard else "") + " --force"


def damaged(path: str | Path, what: str, dataset: str | None = None) -> CacheDamaged:
    """The one-line error for a damaged cache; ``what`` says what is wrong (one line)."""
    what = " ".join(str(what).split())  # h5py messages may span lines
    return CacheDamaged(f"cache {path} is damaged ({what}); rebuild it with `{rebuild_command(Path(path), dataset)}`")


def read_error(path: str | Path, e: BaseException, where: str = "unreadable", dataset: str | None = None) -> CacheDamaged:
    """What h5py raises on a damaged file (OSError on a failed checksum or unreadable metadata,
    KeyError when a B-tree or object header points nowhere) as the one-line cache-damage error."""
    if isinstance(e, CacheDamaged):
        return e
    return damaged(path, f"{where}: {error_text(e)}", dataset)


def error_text(e: BaseException) -> str:
    """An exception's first line (KeyError's own repr quotes it)."""
    text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
    text = text.splitlines()[0] if text else type(e).__name__
    if "filter returned failure" in text:  # Fletcher-32 is the only filter a cache uses
        text += ": a chunk failed its checksum"
    return text


# What reading a damaged HDF5 file can raise (h5py maps HDF5 errors onto these).
READ_ERRORS = (OSError, KeyError, ValueError, RuntimeError, TypeError)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def fingerprint(names: list[str], params: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for n in names:
        h.update(n.encode() + b"\0")
    return h.hexdigest()[:16]


@dataclass
class Intensity:
    """Per-clip intensity levels of a cache: ``codes`` (N,) index into ``levels``; ``table`` (C, L) is the
    target in [0, 1] of a clip of class c at level l (mmvid.data.sources.IntensityScale)."""

    codes: np.ndarray
    levels: list[str]
    table: np.ndarray

    def targets(self, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) float32 target of each row, from its label and level."""
        return self.table[np.asarray(labels)[rows], self.codes[rows]].astype(np.float32)


def read_intensity(f: h5py.File, attrs: dict[str, Any], n: int, num_classes: int) -> tuple[Intensity | None, list[str]]:
    """The cache's intensity levels (None when it has none: another dataset, or a cache of an older mmvid)
    and the problems found: rows, level codes and table entries out of range."""
    if "intensity" not in f:
        return None, []
    try:
        levels = json.loads(attrs["intensity_levels"])
        table = np.asarray(json.loads(attrs["intensity_table"]), dtype=float)
    except (KeyError, TypeError, ValueError):
        return None, ["/intensity has no readable intensity_levels / intensity_table attributes"]
    codes = f["intensity"][:]
    problems = []
    if codes.shape != (n,) or codes.dtype != np.int8:
        problems.append(f"/intensity is {codes.dtype} {codes.shape}, not int8 ({n},)")
    elif ((codes < 0) | (codes >= len(levels))).any():
        problems.append(f"/intensity holds level codes outside 0..{len(levels) - 1}")
    if table.shape != (num_classes, len(levels)) or not np.isfinite(table).all() or (table < 0).any() or (table > 1).any():
        problems.append(f"attribute intensity_table is not a {num_classes} x {len(levels)} table of values in [0, 1]")
    return (None if problems else Intensity(codes, [str(v) for v in levels], table)), problems


@dataclass
class CacheInfo:
    """What a finished cache says about itself (read once, small)."""

    path: Path
    dataset: str
    class_names: list[str]
    modalities: list[str]
    params: dict[str, Any]
    labels: np.ndarray
    split: np.ndarray
    status: np.ndarray
    names: list[str]
    shapes: dict[str, tuple[int, ...]]
    attrs: dict[str, Any]
    intensity: Intensity | None = None  # per-clip intensity levels, where the dataset has them (CREMA-D)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        """Rows of a split that decoded correctly."""
        if split not in SPLIT_NAMES:
            raise MmvidError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_NAMES)}")
        return np.flatnonzero((self.split == SPLIT_NAMES.index(split)) & (self.status == OK))

    @property
    def version(self) -> int:
        return int(self.attrs.get("version", -1))

    @property
    def checksummed(self) -> bool:
        """Version 2 and later: HDF5 checks every chunk it reads against its Fletcher-32 checksum."""
        return self.version >= 2


def expected_shapes(params: dict[str, Any], modalities: list[str]) -> dict[str, tuple[int, ...]]:
    """Per-clip shape of each stored modality implied by the prepare parameters (the attributes)."""
    t, (h, w) = int(params["num_frames"]), frame_hw(params)
    known = {"frames": (t, h, w, 3), "flow": (t, h, w, 2), "spectrogram": audio_shape(params)}
    return {m: tuple(known[m]) for m in modalities if m in known}


DTYPES = {"frames": np.uint8, "flow": np.uint8, "spectrogram": np.float16, "labels": np.int64,
          "split": np.int8, "status": np.int8}


def schema_problems(f: h5py.File, attrs: dict[str, Any], modalities: list[str], params: dict[str, Any],
                    num_classes: int, labels: np.ndarray, split: np.ndarray, status: np.ndarray) -> list[str]:
    """The cheap checks every open runs (no clip data read): rows, dtypes, shapes against the
    attributes, labels in [0, num_classes), split and status values known."""
    problems = []
    n = len(labels)
    for key in [*modalities, "split", "status", "names"]:
        if f[key].shape[:1] != (n,):
            problems.append(f"/{key} has shape {f[key].shape}, /labels has {n} rows")
    for key in [*modalities, "labels", "split", "status"]:
        if f[key].dtype != DTYPES.get(key, f[key].dtype):
            problems.append(f"/{key} is {f[key].dtype}, not {np.dtype(DTYPES[key])}")
    try:
        want = expected_shapes(params, modalities)
    except (KeyError, TypeError, ValueError):
        problems.append("the prepare parameters in the attributes are incomplete")
        want = {}
    for m, shape in want.items():
        if tuple(f[m].shape[1:]) != shape:
            problems.append(f"/{m} holds clips of shape {tuple(f[m].shape[1:])}, the attributes say {shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        problems.append(f"{len(bad)} labels outside 0..{num_classes - 1} (e.g. {int(labels[bad[0]])} in row {int(bad[0])})")
    if ((split < 0) | (split >= len(SPLIT_NAMES))).any():
        problems.append(f"split values outside 0..{len(SPLIT_NAMES) - 1}")
    if not np.isin(status, (PENDING, OK, FAILED)).all():
        problems.append("status values other than pending/ok/failed")
    return problems


def read_info(path: str | Path) -> CacheInfo:
    """Open a finished cache: its attributes, labels, splits and status, after the cheap checks of
    :func:`schema_problems` (a damaged cache raises :class:`CacheDamaged`; no clip data is read)."""
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists():
            raise MmvidError(f"cache {path} is incomplete ({partial_path(path).name} exists); re-run the same `mmvid prepare` to finish it")
        raise MmvidError(f"cache {path} not found; run `mmvid prepare` first")
    dataset = None
    try:
        with h5py.File(path, "r") as f:
            a = dict(f.attrs)
            if a.get("format") != FORMAT:
                raise MmvidError(f"{path} is not an mmvid cache (no format attribute); prepare it with `mmvid prepare`")
            dataset = str(a.get("dataset")) if a.get("dataset") is not None else None
            if int(a.get("version", -1)) not in READABLE_VERSIONS:
                raise MmvidError(f"cache {path} has schema version {a.get('version')}, this mmvid reads "
                                 f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild it with `{rebuild_command(path, dataset)}`")
            if not bool(a.get("complete")):
                raise MmvidError(f"cache {path} is incomplete; re-run the same `mmvid prepare` to finish it")
            mods = json.loads(a["modalities"])
            class_names, params = json.loads(a["class_names"]), json.loads(a["params"])
            labels, split, status = f["labels"][:], f["split"][:], f["status"][:]
            problems = schema_problems(f, a, mods, params, len(class_names), labels, split, status)
            intensity, more = read_intensity(f, a, len(labels), len(class_names))
            problems += more
            if problems:
                raise damaged(path, "; ".join(problems), dataset)
            return CacheInfo(
                path=path, dataset=str(a["dataset"]), class_names=class_names, modalities=mods, params=params,
                labels=labels, split=split, status=status,
                names=[n.decode() if isinstance(n, bytes) else n for n in f["names"][:]],
                shapes={m: tuple(f[m].shape[1:]) for m in mods}, attrs=a, intensity=intensity,
            )
    except MmvidError:
        raise
    except READ_ERRORS as e:  # a failed checksum, a B-tree or header pointing nowhere, garbled attributes
        raise read_error(path, e, "unreadable", dataset) from None


def nonfinite_rows(a: np.ndarray) -> np.ndarray:
    """Indices of the rows (clips) of ``a`` (N, ...) that hold a NaN or an inf."""
    return np.flatnonzero(~np.isfinite(a.reshape(len(a), -1)).all(1))


def verify_cache(info: CacheInfo) -> list[str]:
    """Integrity problems of a finished cache opened by :func:`read_info` (empty list = sound);
    ``prepare --info`` runs it.

    After the checks of :func:`read_info` (which raised on the first damage it saw): unique names,
    no clip left pending, stored counts and fingerprint matching the rows, and a full read of every
    dataset, chunk by chunk, so that each chunk's checksum is tested (version 2) and every float
    value is required to be finite.
    """
    problems: list[str] = []
    n = len(info.names)
    if len(set(info.names)) != n:
        problems.append("clip names are not unique")
    pending = int((info.status == PENDING).sum())
    if pending:
        problems.append(f"{pending} clips were never written (status pending)")
    for key, want in (("num_ok", OK), ("num_failed", FAILED)):
        if int(info.attrs.get(key, -1)) != int((info.status == want).sum()):
            problems.append(f"attribute {key}={info.attrs.get(key)} but /status says {int((info.status == want).sum())}")
    if info.attrs.get("fingerprint") != fingerprint(info.names, info.params):
        problems.append("fingerprint does not match the stored parameters and clip names")
    try:
        with h5py.File(info.path, "r") as f:
            for key in f:  # every dataset, including any this version does not know
                d = f[key]
                step = 64 if d.ndim > 1 else max(1, len(d))  # clip data 64 rows at a time
                for start in range(0, len(d), step):
                    try:
                        data = d[start:start + step]
                    except READ_ERRORS as e:
                        problems.append(f"/{key} is unreadable ({error_text(e)}) in {unreadable_rows(d, start, step, info.names)}")
                        continue
                    if data.dtype.kind == "f" and not np.isfinite(data).all():
                        bad = start + nonfinite_rows(data)
                        problems.append(f"/{key} has non-finite values in clips {[info.names[i] for i in bad[:5]]}")
    except READ_ERRORS as e:
        problems.append(f"unreadable: {error_text(e)}")
    return problems


def unreadable_rows(d: h5py.Dataset, start: int, step: int, names: list[str]) -> str:
    """Which rows of ``d[start:start + step]`` fail to read: clip names for clip data (a chunk per
    clip), else the row range."""
    stop = min(start + step, len(d))
    if d.ndim == 1:
        return f"rows {start}..{stop - 1}"
    bad = []
    for i in range(start, stop):
        try:
            d[i]
        except READ_ERRORS:
            bad.append(names[i] if i < len(names) else str(i))
    return f"clips {bad[:5]}" + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def cache_notes(info: CacheInfo) -> list[str]:
    """What a sound cache lacks that a rebuild would add (``prepare --info`` prints them)."""
    if info.checksummed:
        return []
    return [f"schema version {info.version} carries no per-chunk checksums, so a flipped byte in clip data "
            f"goes unnoticed; `{rebuild_command(info.path, info.dataset)}` rebuilds it as version {VERSION} with them"]


def check_cache(info: CacheInfo) -> list[str]:
    """:func:`verify_cache` of an opened cache (:func:`read_info`) as a verdict: raises :class:`CacheDamaged`
    naming every problem, else returns :func:`cache_notes`."""
    problems = verify_cache(info)
    if problems:
        raise damaged(info.path, f"failed verification: {'; '.join(problems)}", info.dataset)
    return cache_notes(info)
