"""Writing the HDF5 cache (layout and checks in :mod:`mmvid.data.cache`): :class:`CacheWriter` creates or resumes
``<name>.h5.partial`` and renames it once complete; mmvid writes only where no file is, or where its own cache is
(:func:`check_cache_target`)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mmvid.data.cache import FAILED, FORMAT, OK, PENDING, SPLIT_NAMES, VERSION, Intensity, fingerprint, partial_path
from mmvid.errors import MmvidError
from mmvid.workspace import writable_dir

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # the first bytes of an HDF5 file (superblock at offset 0, as h5py writes)


def is_mmvid_cache(path: Path, partial: bool = False) -> bool:
    """Whether the file at ``path`` is a cache (or with ``partial``, a ``.partial`` cache) mmvid wrote, which a
    rebuild may replace: an HDF5 file whose ``format`` attribute is mmvid's. An HDF5 file that h5py cannot open
    counts as one (a damaged cache: the case ``--force`` exists for; any intact HDF5 file opens and shows
    its attributes), and so does an empty ``.partial`` (a prepare killed as it created it)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(HDF5_SIGNATURE))
    except OSError:
        return False
    if partial and not head:
        return True
    if head != HDF5_SIGNATURE:
        return False
    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except Exception:  # noqa: BLE001 - whatever h5py raises on a damaged file
        return True
    return (fmt.decode(errors="replace") if isinstance(fmt, bytes) else fmt) == FORMAT


def check_cache_target(path: Path) -> None:
    """A cache path mmvid may write: no file there (nor at its ``.partial``), or mmvid's cache. Anything else is
    one line, even with ``--force``: mmvid never overwrites a file it did not write."""
    path = Path(path)
    for p, partial in ((path, False), (partial_path(path), True)):
        if not p.exists() and not p.is_symlink():
            continue
        if not p.is_file():
            raise MmvidError(f"{p} is not a file (a cache goes there); mmvid does not replace it: choose another "
                             f"--name or move it")
        if not is_mmvid_cache(p, partial):
            raise MmvidError(f"{p} exists but is not a cache written by `mmvid prepare` (not an HDF5 file with "
                             f"mmvid's attributes); mmvid does not overwrite it, even with --force: choose another "
                             f"--name or move that file")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


class CacheWriter:
    """Creates or resumes ``<path>.partial``; ``write(i, sample)`` per clip; ``finalize()`` renames."""

    def __init__(self, path: Path, names: list[str], labels: list[int], splits: list[str],
                 class_names: list[str], shapes: dict[str, tuple[int, ...]], params: dict[str, Any],
                 dataset: str, force: bool = False, intensity: Intensity | None = None) -> None:
        self.path = Path(path)
        self.partial = partial_path(self.path)
        check_cache_target(self.path)  # before --force removes the partial file or the rename replaces the cache
        writable_dir(self.path.parent, "cache folder")
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
        if intensity is not None and "intensity" not in f:  # also into a partial file of an older version
            write_intensity(f, intensity)
        self.f = f
        self.resumed = resumed

    @staticmethod
    def _create(f, names, labels, splits, class_names, shapes, params, dataset, fp) -> None:
        n = len(names)
        bad = sorted(set(splits) - set(SPLIT_NAMES))
        if bad:
            raise MmvidError(f"unknown split names {bad}; use {', '.join(SPLIT_NAMES)}")
        # fletcher32: a checksum per chunk, checked by HDF5 on every read (a flipped byte -> OSError).
        for key, shape in shapes.items():
            dtype = np.float16 if key == "spectrogram" else np.uint8
            f.create_dataset(key, shape=(n, *shape), dtype=dtype, chunks=(1, *shape), fletcher32=True)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.int64), fletcher32=True)
        encoded = [str(name).encode() for name in names]
        width = max([len(b) for b in encoded] + [1])
        f.create_dataset("names", data=np.asarray(encoded, dtype=h5py.string_dtype("utf-8", width)), fletcher32=True)
        f.create_dataset("split", data=np.asarray([SPLIT_NAMES.index(s) for s in splits], dtype=np.int8),
                         fletcher32=True)
        f.create_dataset("status", data=np.zeros(n, dtype=np.int8), fletcher32=True)
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

    def failed_rows(self) -> np.ndarray:
        return np.flatnonzero(self.f["status"][:] == FAILED)

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


def write_intensity(f: h5py.File, intensity: Intensity) -> None:
    f.create_dataset("intensity", data=np.asarray(intensity.codes, dtype=np.int8), fletcher32=True)
    f.attrs["intensity_levels"] = json.dumps(list(intensity.levels))
    f.attrs["intensity_table"] = json.dumps(np.asarray(intensity.table, dtype=float).tolist())
