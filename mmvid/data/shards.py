"""Sharded prepare: ``mmvid prepare NAME --shard i/n`` on n machines, then ``mmvid prepare NAME --merge``.

Assignment: clip ``k`` of the source's clip list goes to shard ``k mod n`` (``i`` is 0-based, as Slurm's
``$SLURM_ARRAY_TASK_ID`` of ``--array=0-15``). Every source lists its clips in a sorted, deterministic
order (the order of an unsharded cache), so each machine computes the same shards. Index modulo n rather
than a hash of the clip name: shards differ in size by at most one clip, and the merge restores the
source's order from the shard files alone (row ``r`` of shard ``i`` is clip ``i + r * n``), without listing
the source again. Each shard is an ordinary ``prepare`` of its subset into
``<name>.shard-<i>-of-<n>.h5`` and resumes like one; its ``shard`` attribute records ``i``, ``n``, the
number of clips of the whole source and a fingerprint of all its clip names, labels, splits, classes and
the parameters (:func:`listing_fingerprint`), which the merged rows must reproduce: shards of another
listing, other parameters or another ``n`` are refused.

Merge: a copy into ``<name>.h5``, not an HDF5 virtual dataset. The copy is one self-contained file with
the schema, chunking and per-chunk Fletcher-32 checksums of a cache made in one go (it is written by the
same :class:`~mmvid.data.cache_writer.CacheWriter`), so training, ``--info`` and the damage checks read it
unchanged; the copy also reads, and so checksum-verifies, every chunk of every shard. A virtual dataset
would keep the shard files as its storage: they would have to stay beside it, a moved or deleted shard
breaks it, and its mapping carries no checksums of its own. The price is disk space (shards and merged
cache side by side until the shards are deleted) and one sequential read and write of the data. The
merge writes ``<name>.h5.partial`` and resumes it when interrupted, like ``prepare``.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from mmvid.data.cache import FAILED, OK, READ_ERRORS, SPLIT_NAMES, Intensity, fingerprint, read_error, read_info
from mmvid.data.cache_writer import CacheWriter
from mmvid.data.prepare import PrepareReport, unlearnable_classes
from mmvid.data.sources.base import Source
from mmvid.errors import MmvidError
from mmvid.workspace import write_atomic

MAX_SHARDS = 100_000
BLOCK = 64  # clips read from a shard at a time


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; anything else is one line naming ``--shard``."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not (1 <= int(m[2]) <= MAX_SHARDS and int(m[1]) < int(m[2])):
        raise MmvidError(f"--shard {text!r}: expected i/n with 0 <= i < n <= {MAX_SHARDS} "
                         f"(shard i of n, counted from 0: --shard 0/16 ... --shard 15/16)")
    return int(m[1]), int(m[2])


def shard_path(cache: Path, i: int, n: int) -> Path:
    """``<workspace>/caches/<name>.shard-<i>-of-<n>.h5`` beside the merged ``<name>.h5``."""
    cache = Path(cache)
    return cache.with_name(f"{cache.name[:-3] if cache.name.endswith('.h5') else cache.name}.shard-{i}-of-{n}.h5")


def select_shard(src: Source, i: int, n: int, params: dict[str, Any]) -> tuple[Source, dict[str, Any]]:
    """The clips ``i, i + n, i + 2n, ...`` of ``src`` as a source of their own, and the record that the shard's
    cache keeps in its ``shard`` attribute (``params``: the prepare parameters, as the cache stores them)."""
    total = len(src.clips)
    if i >= total:
        raise MmvidError(f"--shard {i}/{n}: dataset {src.dataset!r} has only {total} clips, so shard {i} would be "
                         f"empty; use at most {total} shards")
    record = {"index": i, "count": n, "total": total,
              "fingerprint": listing_fingerprint([c.name for c in src.clips], [c.label for c in src.clips],
                                                 [c.split for c in src.clips], src.class_names, params)}
    return replace(src, clips=src.clips[i::n]), record


def listing_fingerprint(names: list[str], labels, splits, class_names: list[str], params: dict[str, Any]) -> str:
    """:func:`~mmvid.data.cache.fingerprint` of the whole source's clip names, with their labels, splits (names)
    and the class list beside the parameters: shards of the same files listed with another split seed or
    class list must not merge."""
    return fingerprint(list(names), {"params": params, "labels": [int(x) for x in labels],
                                     "splits": [str(s) for s in splits], "classes": list(class_names)})


SHARD_FILE = r"\.shard-(\d+)-of-(\d+)\.h5(\.partial)?"


def find_shards(cache: Path) -> tuple[int, dict[int, Path]]:
    """``(n, {i: finished shard file})`` of the merged ``cache``; refuses (one line) when there are none, when
    they disagree on n, or when one is missing or not finished (naming which)."""
    cache = Path(cache)
    stem = cache.name[:-3] if cache.name.endswith(".h5") else cache.name
    pattern = re.compile(re.escape(stem) + SHARD_FILE)
    found: dict[int, dict[int, Path]] = {}
    partial: dict[int, set[int]] = {}
    for p in sorted(cache.parent.glob(f"{stem}.shard-*")) if cache.parent.is_dir() else []:
        m = pattern.fullmatch(p.name)
        if not m:
            continue
        i, n = int(m[1]), int(m[2])
        (partial.setdefault(n, set()).add(i) if m[3] else found.setdefault(n, {}).__setitem__(i, p))
    counts = sorted(set(found) | set(partial))
    how = f"`mmvid prepare {stem} ... --shard i/n` on each machine"
    if not counts:
        raise MmvidError(f"no shards of {stem} in {cache.parent} (looked for {stem}.shard-<i>-of-<n>.h5); "
                         f"prepare them first with {how}")
    if len(counts) > 1:
        raise MmvidError(f"shards of {stem} in {cache.parent} were made with different shard counts "
                         f"(n = {', '.join(map(str, counts))}); delete the stale ones and merge again")
    n = counts[0]
    done = found.get(n, {})
    stray = sorted(i for i in done if i >= n)
    if stray:
        raise MmvidError(f"{done[stray[0]]} is not a shard of {n} (shards are counted 0..{n - 1}); delete it")
    unfinished = sorted(i for i in partial.get(n, set()) if i not in done)
    missing = sorted(i for i in range(n) if i not in done and i not in unfinished)
    problems = []
    if missing:
        problems.append(f"missing shards {', '.join(f'{i}/{n}' for i in missing)} "
                        f"(no {shard_path(cache, missing[0], n).name}" + (" ..." if len(missing) > 1 else "") + ")")
    if unfinished:
        problems.append(f"shards {', '.join(f'{i}/{n}' for i in unfinished)} not finished "
                        f"({shard_path(cache, unfinished[0], n).name}.partial" + (" ..." if len(unfinished) > 1 else "") + ")")
    if problems:
        raise MmvidError(f"cannot merge {stem}: {'; '.join(problems)}; run (or re-run, which resumes) "
                         f"`mmvid prepare {stem} ... --shard i/{n}` for each, with the same options")
    return n, done


def _differences(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def _shard_record(info) -> dict[str, Any]:
    try:
        rec = json.loads(info.attrs["shard"])
        if isinstance(rec, dict) and {"index", "count", "total", "fingerprint"} <= set(rec):
            return rec
    except (KeyError, TypeError, ValueError):
        pass
    raise MmvidError(f"{info.path} has no shard record (attribute 'shard'); it was not made by "
                     f"`mmvid prepare ... --shard i/n`: delete it or prepare that shard again with --force")


def _read_report(path: Path) -> dict[str, Any]:
    p = path.with_name(path.name + ".report.json")
    try:
        rep = json.loads(p.read_text())
        return rep if isinstance(rep, dict) else {}
    except (OSError, ValueError):
        return {}


def check_shards(cache: Path, given: dict[str, Any] | None = None):
    """Open and cross-check the shards of ``cache``: ``(n, infos, names, labels, splits)`` with the merged
    rows in the source's order. Refuses (one line) shards made from other sources, parameters or n, and
    prepare options (``given``) that differ from those the shards were made with."""
    n, files = find_shards(cache)
    infos = [read_info(files[i]) for i in range(n)]  # a damaged shard is one CacheDamaged line naming it
    recs = [_shard_record(info) for info in infos]
    first, rec0 = infos[0], recs[0]
    for i, (info, rec) in enumerate(zip(infos, recs)):
        if (rec["index"], rec["count"]) != (i, n):
            raise MmvidError(f"{info.path.name} records shard {rec['index']}/{rec['count']}, not {i}/{n} (was it "
                             f"renamed?); prepare shard {i}/{n} again with --force")
        for what, mine, theirs in (("dataset", info.dataset, first.dataset), ("classes", info.class_names, first.class_names),
                                   ("modalities", info.modalities, first.modalities), ("schema version", info.version, first.version)):
            if mine != theirs:
                raise MmvidError(f"shards of {Path(cache).name} were made from different sources: {info.path.name} has "
                                 f"{what} {mine}, {first.path.name} has {theirs}; prepare every shard with the same command")
        if info.params != first.params:
            raise MmvidError(f"shards of {Path(cache).name} were made with different prepare parameters "
                             f"({info.path.name} vs {first.path.name}: {_differences(info.params, first.params)}); "
                             f"prepare every shard with the same options")
        if rec["total"] != rec0["total"] or rec["fingerprint"] != rec0["fingerprint"]:
            raise MmvidError(f"shards of {Path(cache).name} were made from different clip lists ({info.path.name}: "
                             f"{rec['total']} clips, {first.path.name}: {rec0['total']}); list the source the same way "
                             f"(same --root and split options) on every machine")
        if len(info.names) != len(range(i, rec0["total"], n)):
            raise MmvidError(f"{info.path.name} holds {len(info.names)} clips, shard {i}/{n} of {rec0['total']} clips "
                             f"has {len(range(i, rec0['total'], n))}; prepare it again with --force")
    wrong = {k: v for k, v in (given or {}).items() if k in first.params and first.params[k] != v}
    if wrong:
        raise MmvidError(f"the shards were prepared with {', '.join(f'{k}={first.params[k]!r}' for k in wrong)}, not "
                         f"{', '.join(f'{k}={v!r}' for k, v in wrong.items())}; --merge takes the shards as they are: "
                         f"drop those options or prepare the shards again with them")
    total = rec0["total"]
    names: list[str] = [""] * total
    labels = np.zeros(total, dtype=np.int64)
    splits = np.zeros(total, dtype=np.int8)
    for i, info in enumerate(infos):
        names[i::n] = info.names
        labels[i::n], splits[i::n] = info.labels, info.split
    if listing_fingerprint(names, labels, [SPLIT_NAMES[k] for k in splits], first.class_names,
                           first.params) != rec0["fingerprint"]:
        raise MmvidError(f"the shards of {Path(cache).name} do not add up to the clip list they were made from "
                         f"(its fingerprint differs); prepare them again with the same command and --force")
    return n, infos, names, labels, splits


def merge_shards(cache: Path, given: dict[str, Any] | None = None, force: bool = False, progress: bool = True):
    """Copy the shards of ``cache`` into ``cache`` (a :class:`~mmvid.data.prepare.PrepareReport`, also saved as
    ``<cache>.report.json``): the rows, labels, splits, status, classes and attributes of an unsharded
    ``prepare`` of the same source, in the source's order; failed clips merged with their error texts."""
    start = time.time()
    cache = Path(cache)
    n, infos, names, labels, splits = check_shards(cache, given)
    first = infos[0]
    status = np.empty(len(names), dtype=np.int8)  # the merged rows' status, as the shards recorded it
    for i, info in enumerate(infos):
        status[i::n] = info.status
    report = PrepareReport(cache=cache, total=len(names))
    reports = [_read_report(info.path) for info in infos]
    report.notes, report.excluded = list(reports[0].get("notes", [])), list(reports[0].get("excluded", []))
    if cache.exists() and not force:
        try:
            have = read_info(cache)
            if (have.params == first.params and have.names == names and have.class_names == first.class_names
                    and all(np.array_equal(x, y) for x, y in ((have.labels, labels), (have.split, splits),
                                                              (have.status, status)))):
                report.already_complete, report.ok = True, int((have.status == OK).sum())
                return report
        except MmvidError:
            pass
    writer = CacheWriter(cache, names, labels.tolist(), [SPLIT_NAMES[s] for s in splits], first.class_names,
                         first.shapes, first.params, first.dataset, force=force, intensity=merged_intensity(infos, n))
    pending = np.zeros(len(names), dtype=bool)
    pending[writer.pending()] = True
    report.skipped_done = int((~pending).sum())
    try:
        with Progress(TextColumn("[bold]merge[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                      disable=not progress, transient=False) as bar:
            task = bar.add_task(cache.name, total=int(pending.sum()))
            for i, info in enumerate(infos):
                _copy_shard(info, i, n, writer, pending, lambda k: bar.update(task, advance=k))
    except KeyboardInterrupt:
        writer.close()
        raise MmvidError(f"merge interrupted; {writer.partial} keeps the copied clips, re-run the same command to resume") from None
    except BaseException:
        writer.close()
        raise
    errors = {f["name"]: f for rep in reports for f in rep.get("failed", []) if isinstance(f, dict) and "name" in f}
    report.failed = [errors.get(names[j]) or {"name": names[j], "file": "", "error": "failed (its shard's report is gone)"}
                     for j in np.flatnonzero(status == FAILED)]
    report.decoder_messages = [m for rep in reports for m in rep.get("decoder_messages", []) if isinstance(m, dict)]
    versions = [json.loads(info.attrs.get("versions", "{}")) for info in infos]
    if any(v != versions[0] for v in versions):  # decoders of other versions may decode other pixels: keep each
        report.notes.append("the shards were prepared with different library versions (attribute 'versions' lists each)")
        merged_versions: Any = {info.path.name: v for info, v in zip(infos, versions)}
    else:
        merged_versions = versions[0]
    writer.finalize({"versions": merged_versions, "failed": [f["name"] for f in report.failed]})
    info = read_info(cache)
    report.ok = int((info.status == OK).sum())
    report.empty_classes = unlearnable_classes(info)
    report.seconds = time.time() - start
    write_atomic(cache.with_name(cache.name + ".report.json"), json.dumps(report.to_json(), indent=2))
    return report


def merged_intensity(infos, n: int) -> Intensity | None:
    """The shards' intensity levels in the merged order (row r of shard i is row i + r * n); None unless every
    shard has them."""
    if any(info.intensity is None for info in infos):
        return None
    codes = np.zeros(sum(len(info.names) for info in infos), dtype=np.int8)
    for i, info in enumerate(infos):
        codes[i::n] = info.intensity.codes
    return Intensity(codes, infos[0].intensity.levels, infos[0].intensity.table)


def _copy_shard(info, i: int, n: int, writer: CacheWriter, pending: np.ndarray, advance) -> None:
    """Rows of shard ``i`` into the merged rows ``i + r * n`` still pending, ``BLOCK`` clips at a time; every
    chunk read is checked against its checksum, so a damaged shard fails here, naming it."""
    try:
        with h5py.File(info.path, "r") as f:
            for lo in range(0, len(info.names), BLOCK):
                hi = min(lo + BLOCK, len(info.names))
                block = [r for r in range(lo, hi) if pending[i + r * n]]
                if not block:
                    continue
                data = {m: f[m][lo:hi] for m in info.modalities}
                for r in block:
                    j, st = i + r * n, int(info.status[r])
                    if st == OK:
                        writer.write(j, {m: data[m][r - lo] for m in info.modalities})
                    elif st == FAILED:
                        writer.fail(j)
                    else:
                        raise MmvidError(f"{info.path} has clip {info.names[r]!r} still pending although the shard is "
                                         f"marked finished; prepare that shard again with --force")
                writer.flush()  # a killed merge resumes after the last flushed block
                advance(len(block))
    except MmvidError:
        raise
    except READ_ERRORS as e:
        raise read_error(info.path, e, "unreadable while merging") from None

