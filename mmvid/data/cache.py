"""The HDF5 cache, schema version 1: decoded once by ``prepare``, read by every later command.

Layout (N clips, T frames, S image size, F x L spectrogram bins x steps)::

    /frames       uint8   (N, T, S, S, 3)  RGB, chunk = one clip
    /flow         uint8   (N, T, S, S, 2)  optional; u, v quantised q = round(f * 255 / 2B) + 128, B = flow_bound
                                           (128 = zero motion, the denseflow JPEG convention; mmvid.data.flow)
    /spectrogram  float16 (N, F, L)        log(|STFT| + 1e-7)
    /labels       int64   (N,)
    /names        str     (N,)
    /split        int8    (N,)             index into attrs["split_names"]
    /status       int8    (N,)             0 pending, 1 ok, 2 failed (failed clips are in the JSON report)

Attributes describe the cache: format, version, dataset, class_names, split_names, modalities,
every prepare parameter (fps, num_frames, image_size, sample_rate, clip_seconds, n_fft, hop,
window, normalisation, decoder, library versions), counts and ``complete``. A cache is written to
``<name>.h5.partial`` and renamed only when complete, so a crash never leaves a file that later
commands read as finished; re-running the same ``prepare`` resumes the partial file.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmvid.errors import MmvidError

FORMAT = "mmvid-cache"
VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
SPLIT_NAMES = ("train", "val", "test")


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def fingerprint(names: list[str], params: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for n in names:
        h.update(n.encode() + b"\0")
    return h.hexdigest()[:16]


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


class CacheWriter:
    """Creates or resumes ``<path>.partial``; ``write(i, sample)`` per clip; ``finalize()`` renames."""

    def __init__(self, path: Path, names: list[str], labels: list[int], splits: list[str],
                 class_names: list[str], shapes: dict[str, tuple[int, ...]], params: dict[str, Any],
                 dataset: str, force: bool = False) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fp = fingerprint(names, params)
        if force:
            self.partial.unlink(missing_ok=True)
        resumed = False
        if self.partial.exists():
            try:
                f = h5py.File(self.partial, "a")
                resumed = f.attrs.get("fingerprint") == fp
                if not resumed:
                    f.close()
            except OSError:  # a crash mid-write can leave an unreadable file: start again
                resumed = False
            if not resumed:
                self.partial.unlink()
        if not resumed:
            f = h5py.File(self.partial, "w")
            self._create(f, names, labels, splits, class_names, shapes, params, dataset, fp)
        self.f = f
        self.resumed = resumed

    @staticmethod
    def _create(f, names, labels, splits, class_names, shapes, params, dataset, fp) -> None:
        n = len(names)
        for key, shape in shapes.items():
            dtype = np.float16 if key == "spectrogram" else np.uint8
            f.create_dataset(key, shape=(n, *shape), dtype=dtype, chunks=(1, *shape))
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64))
        f.create_dataset("names", data=np.asarray(names, dtype=object), dtype=h5py.string_dtype())
        bad = sorted(set(splits) - set(SPLIT_NAMES))
        if bad:
            raise MmvidError(f"unknown split names {bad}; use {', '.join(SPLIT_NAMES)}")
        f.create_dataset("split", data=np.asarray([SPLIT_NAMES.index(s) for s in splits], dtype=np.int8))
        f.create_dataset("status", data=np.zeros(n, dtype=np.int8))
        a = f.attrs
        a["format"], a["version"], a["dataset"], a["fingerprint"] = FORMAT, VERSION, dataset, fp
        a["class_names"] = json.dumps(list(class_names))
        a["split_names"] = json.dumps(list(SPLIT_NAMES))
        a["modalities"] = json.dumps(list(shapes))
        a["params"] = json.dumps(params, default=_json_default, sort_keys=True)
        for k, v in params.items():  # each parameter also as its own attribute, for h5dump / h5py users
            a[f"param.{k}"] = json.dumps(v, default=_json_default)
        a["complete"] = False
        a["created"] = time.strftime("%Y-%m-%dT%H:%M:%S")

    def pending(self) -> np.ndarray:
        return np.flatnonzero(self.f["status"][:] == PENDING)

    def write(self, i: int, sample: dict[str, np.ndarray]) -> None:
        for key, value in sample.items():
            self.f[key][i] = value
        self.f["status"][i] = OK

    def fail(self, i: int) -> None:
        self.f["status"][i] = FAILED

    def flush(self) -> None:
        self.f.flush()

    def finalize(self, extra_attrs: dict[str, Any] | None = None) -> Path:
        status = self.f["status"][:]
        a = self.f.attrs
        a["num_clips"] = int(len(status))
        a["num_ok"] = int((status == OK).sum())
        a["num_failed"] = int((status == FAILED).sum())
        for k, v in (extra_attrs or {}).items():
            a[k] = json.dumps(v, default=_json_default)
        a["complete"] = True
        self.f.close()
        self.partial.replace(self.path)
        return self.path

    def close(self) -> None:
        try:
            self.f.close()
        except Exception:
            pass


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def indices(self, split: str) -> np.ndarray:
        """Rows of a split that decoded correctly."""
        if split not in SPLIT_NAMES:
            raise MmvidError(f"unknown split {split!r}; choose one of: {', '.join(SPLIT_NAMES)}")
        return np.flatnonzero((self.split == SPLIT_NAMES.index(split)) & (self.status == OK))


def read_info(path: str | Path) -> CacheInfo:
    path = Path(path)
    if not path.exists():
        if partial_path(path).exists():
            raise MmvidError(f"cache {path} is incomplete ({partial_path(path).name} exists); re-run the same `mmvid prepare` to finish it")
        raise MmvidError(f"cache {path} not found; run `mmvid prepare` first")
    try:
        with h5py.File(path, "r") as f:
            a = dict(f.attrs)
            if a.get("format") != FORMAT:
                raise MmvidError(f"{path} is not an mmvid cache (no format attribute); prepare it with `mmvid prepare`")
            if int(a.get("version", -1)) != VERSION:
                raise MmvidError(f"cache {path} has schema version {a.get('version')}, this mmvid reads {VERSION}; re-run prepare with --force")
            if not bool(a.get("complete")):
                raise MmvidError(f"cache {path} is incomplete; re-run the same `mmvid prepare` to finish it")
            mods = json.loads(a["modalities"])
            return CacheInfo(
                path=path, dataset=str(a["dataset"]), class_names=json.loads(a["class_names"]),
                modalities=mods, params=json.loads(a["params"]), labels=f["labels"][:],
                split=f["split"][:], status=f["status"][:],
                names=[n.decode() if isinstance(n, bytes) else n for n in f["names"][:]],
                shapes={m: tuple(f[m].shape[1:]) for m in mods}, attrs=a,
            )
    except OSError as e:
        raise MmvidError(f"cannot read cache {path}: {e}; re-run `mmvid prepare ... --force`") from None


def verify_cache(path: str | Path) -> list[str]:
    """Integrity problems of a finished cache (empty list = sound).

    Checks the schema (row counts, label and split ranges, unique names), that no clip is left
    pending, that the stored counts and fingerprint match the rows, and reads every decoded row of
    every modality (a damaged HDF5 chunk fails here, not in the middle of training), requiring
    finite spectrograms.
    """
    info = read_info(path)
    problems: list[str] = []
    n = len(info.names)
    with h5py.File(info.path, "r") as f:
        for key in [*info.modalities, "labels", "split", "status"]:
            if f[key].shape[0] != n:
                problems.append(f"/{key} has {f[key].shape[0]} rows, /names has {n}")
    if len(set(info.names)) != n:
        problems.append("clip names are not unique")
    if ((info.labels < 0) | (info.labels >= info.num_classes)).any():
        problems.append(f"labels outside 0..{info.num_classes - 1}")
    if ((info.split < 0) | (info.split >= len(SPLIT_NAMES))).any():
        problems.append("split indices outside the split names")
    pending = int((info.status == PENDING).sum())
    if pending:
        problems.append(f"{pending} clips were never written (status pending)")
    for key, want in (("num_ok", OK), ("num_failed", FAILED)):
        if int(info.attrs.get(key, -1)) != int((info.status == want).sum()):
            problems.append(f"attribute {key}={info.attrs.get(key)} but /status says {int((info.status == want).sum())}")
    if info.attrs.get("fingerprint") != fingerprint(info.names, info.params):
        problems.append("fingerprint does not match the stored parameters and clip names")
    rows = np.flatnonzero(info.status == OK)
    with h5py.File(info.path, "r") as f:
        for key in info.modalities:
            for start in range(0, len(rows), 64):
                chunk = rows[start:start + 64]
                try:
                    data = f[key][chunk]
                except OSError as e:
                    problems.append(f"/{key} rows {chunk[0]}..{chunk[-1]} are unreadable: {e}")
                    break
                if data.dtype.kind == "f" and not np.isfinite(data).all():
                    bad = chunk[~np.isfinite(data.reshape(len(chunk), -1)).all(1)]
                    problems.append(f"/{key} has non-finite values in clips {[info.names[i] for i in bad[:5]]}")
    return problems
