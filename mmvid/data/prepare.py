"""Decode every clip of a source once into the HDF5 cache: parallel, resumable, safe on bad files."""

from __future__ import annotations

import ctypes
import io
import json
import multiprocessing as mp
import os
import platform
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmvid._version import __version__
from mmvid.data.cache import OK, SPLIT_NAMES, Intensity, read_info
from mmvid.data.cache_writer import CacheWriter
from mmvid.data.decode import DecodeError, NoAudioError, decode_audio, decode_frames, decoder_log
from mmvid.data.features import audio_feature, silent_audio
from mmvid.data.flow import clip_flow, read_rgb_dir
from mmvid.data.params import PrepareParams
from mmvid.data.sources.base import ClipSpec, Source
from mmvid.errors import MmvidError
from mmvid.workspace import write_atomic


@dataclass
class PrepareReport:
    cache: Path
    total: int = 0
    ok: int = 0
    skipped_done: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    excluded: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}: inputs the source skipped
    empty_classes: list[dict[str, str]] = field(default_factory=list)  # {"name", "reason"}: no usable training clip
    # {"name", "file", "messages"}: clips that decoded, and what the decoders printed meanwhile (failed clips
    # carry theirs as "decoder_log" in ``failed``); never printed on the terminal
    decoder_messages: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    already_complete: bool = False
    workers: int = 0  # decoder processes used (``auto`` resolved); 0 when nothing was decoded

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cache"] = str(self.cache)
        return d


def unlearnable_classes(info) -> list[dict[str, str]]:
    """Classes of a finished cache without a usable training clip, each with the reason: no clip was
    listed, every clip failed to decode, or the usable ones are all in other splits. Such a class keeps
    its label (labels are fixed before decoding, so a resumed run and the cache agree) but cannot be learned.
    """
    out = []
    for c, name in enumerate(info.class_names):
        mine = info.labels == c
        ok = mine & (info.status == OK)
        if not mine.any():
            reason = "no clip of this class in the source"
        elif not ok.any():
            reason = f"all {int(mine.sum())} clips failed to decode"
        elif not (ok & (info.split == SPLIT_NAMES.index("train"))).any():
            where = ", ".join(f"{int((ok & (info.split == k)).sum())} in {s}" for k, s in enumerate(SPLIT_NAMES)
                              if (ok & (info.split == k)).any())
            reason = f"no usable clip in the train split ({where})"
        else:
            continue
        out.append({"name": name, "reason": reason})
    return out


def source_intensity(source: Source) -> Intensity | None:
    """The cache's per-clip intensity levels from a source that has them (every clip's ``level``)."""
    scale = source.intensity
    if scale is None:
        return None
    return Intensity(np.asarray([scale.levels.index(c.level) for c in source.clips], dtype=np.int8),
                     list(scale.levels), np.asarray(scale.table, dtype=float))


def library_versions() -> dict[str, str]:
    import librosa  # takes seconds to import (numba): loaded where a cache is written, not with this module

    out = {"python": platform.python_version(), "h5py": h5py.__version__, "librosa": librosa.__version__,
           "numpy": np.__version__}
    for mod in ("decord", "av"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            out[mod] = "missing"
    out["mmvid"] = __version__
    return out


def process_clip(clip: ClipSpec, p: PrepareParams) -> dict[str, np.ndarray]:
    """Decode one clip into the cache's arrays. Raises DecodeError (reported, skipped) on bad input."""
    if clip.rgb_dir is not None:
        frames = read_rgb_dir(clip.rgb_dir, p)
    else:
        if clip.video is None:
            raise DecodeError("no video file")
        frames, _ = decode_frames(clip.video, p.num_frames, p.fps, p.frame_hw(), p.decoder, min_seconds=p.min_seconds,
                                  select=p.frame_select, anchor=p.frame_anchor)
    if p.jpeg_quality:
        frames = jpeg_roundtrip(frames, p.jpeg_quality)
    sample: dict[str, np.ndarray] = {"frames": frames}
    audio_src = clip.audio or clip.video
    try:
        if audio_src is None:
            raise NoAudioError("no audio file")
        wave = decode_audio(audio_src, p.sample_rate, p.resample)
        sample["spectrogram"] = audio_feature(wave, p).astype(np.float16)
    except NoAudioError as e:
        if p.missing_audio != "zeros":
            raise NoAudioError(f"{e} (--missing-audio zeros keeps such clips with a silent spectrogram)") from None
        sample["spectrogram"] = silent_audio(p).astype(np.float16)
    if p.flow != "none":
        sample["flow"] = clip_flow(clip, p)
    return sample


def jpeg_roundtrip(frames: np.ndarray, quality: int) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames as the reference's frame folders hold them: each written as a JPEG of
    ``quality`` with OpenCV (OGM-GE's video_preprocessing.py: ``cv2.imencode('.jpg', bgr)``, quality 95 by
    default) and read back with PIL (the reference loaders' ``Image.open(...).convert('RGB')``)."""
    import cv2  # OpenCV is optional until a frame is JPEG-encoded or flow computed (mmvid.data.flow._cv2)

    out = np.empty_like(frames)
    for i, rgb in enumerate(frames):
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise DecodeError("JPEG encoding of a frame failed")
        out[i] = np.asarray(Image.open(io.BytesIO(buf.tobytes())).convert("RGB"))
    return out


def _process_safe(i: int, clip: ClipSpec, p: PrepareParams) -> tuple[int, dict[str, np.ndarray] | None, str, list[str]]:
    """(row, arrays or None, error text or "", what the decoders printed: :func:`decoder_log`)."""
    with decoder_log() as log:
        try:
            sample, err = process_clip(clip, p), ""
        except MmvidError as e:
            sample, err = None, str(e)
        except Exception as e:  # a decoder crash on one file must not stop the others
            sample, err = None, f"{type(e).__name__}: {e}"
    return i, sample, err, log


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _exit_with_parent(parent: int) -> None:
    """Pool initializer: a decoder worker never outlives ``prepare``.

    A worker blocks on its task queue, and holds that queue's write end itself, so it never sees
    EOF when the parent is killed (``kill -9``, OOM killer): it would wait forever, and keep the
    multiprocessing resource tracker (which exits once every holder of its pipe is gone) alive too.
    On Linux the kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); elsewhere, or
    should ``prctl`` be unavailable, a daemon thread notices the parent pid change within a second.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no libc prctl (e.g. a static build): the watchdog still works
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="mmvid-parent-watchdog", daemon=True).start()


def _watch_parent(parent: int, interval: float = 1.0) -> None:
    while True:
        time.sleep(interval)
        if os.getppid() != parent:  # reparented: the parent is gone
            os._exit(1)


RECYCLE_AFTER = 1000  # clips per decoder process before a fresh one takes over (see _run_pool)
MIN_CLIPS_PER_WORKER = 25  # a worker takes 2-3 s to start: about 25 clips' decoding on a CREMA-D-sized clip


def auto_workers(n_clips: int, cpus: int | None = None) -> int:
    """``--workers auto``: one decoder process per usable CPU, but no more than one per
    ``MIN_CLIPS_PER_WORKER`` clips (so 1 below 50 clips: with fewer, a second worker's start-up costs
    more than it saves)."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, n_clips // MIN_CLIPS_PER_WORKER))


def _run_pool(todo: np.ndarray, source: Source, params: PrepareParams, workers: int, record,
              recycle_after: int = RECYCLE_AFTER, decode=None) -> None:
    """Decode ``todo`` in ``workers`` processes; results are written by this process only (one HDF5 writer).

    Memory stays flat whatever the number of clips:

    * at most ``2 * workers`` clips are in flight (submitted, decoded, or being written), so at most
      that many results are held here; a result is dropped as soon as it is written (the pool used to hold every future, +0.39 MB per clip);
    * every ``recycle_after * workers`` clips the pool is replaced by a fresh one, so that no decoder
      process lives for much more than ``recycle_after`` clips: what the decoders leak (decord's frame
      reader about 1-8 KB per call, PyAV's about 21 KB) dies with it. A fresh pool costs one worker
      start-up (2-3 s) per ``recycle_after`` clips, about 3 % at 0.1 s a clip. (Whole pools rather than
      ``max_tasks_per_child``: in Python 3.11 a worker retiring that way may not be replaced when the
      pool counts an idle one, which can leave the last clips with no worker.)

    Worker processes, not threads, so the leaks die with them; they exit with the parent, however it
    ends (``_exit_with_parent``). ``decode`` (default ``_process_safe``) is the function run per clip,
    importable by name in a spawned process.
    """
    decode = decode or _process_safe
    ctx = mp.get_context("spawn")
    done = 0
    per_pool = max(1, recycle_after) * workers
    for start in range(0, len(todo), per_pool):
        clips = iter(todo[start:start + per_pool])
        # The pool spawns its workers from this thread (in ``submit``), which PR_SET_PDEATHSIG ties them to.
        pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_exit_with_parent, initargs=(os.getpid(),))
        try:
            pending: set = set()

            def fill() -> None:
                for i in clips:
                    pending.add(pool.submit(decode, int(i), source.clips[i], params))
                    if len(pending) >= 2 * workers:
                        return

            fill()
            while pending:  # a worker has its second clip to decode while this process writes the first
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    done += 1
                    record(*fut.result(), done)
                del finished, fut  # the last references to the written results
                fill()
        finally:
            # On Ctrl-C or an error, drop the queued clips instead of decoding them all before exiting.
            pool.shutdown(wait=True, cancel_futures=True)


def _recorded_failures(path: Path, writer: CacheWriter, source: Source) -> list[dict[str, str]]:
    """The failed clips of a resumed run: the error texts saved beside the partial cache, completed from the
    partial cache's own status column, which is the authority (a kill between its flush and the JSON's, or a
    JSON from before atomic writes, must not drop a failed clip from the final report)."""
    try:
        saved = json.loads(path.read_text()) if path.exists() else []
        saved = [f for f in saved if isinstance(f, dict) and {"name", "file", "error"} <= set(f)]
    except (OSError, ValueError):
        saved = []
    by_name = {f["name"]: f for f in saved}
    out = []
    for i in writer.failed_rows():
        clip = source.clips[i]
        out.append(by_name.get(clip.name) or {"name": clip.name, "file": str(clip.video or clip.audio or clip.rgb_dir),
                                              "error": "failed before the interruption (its error text was lost)"})
    return out


def prepare(source: Source, cache: Path, params: PrepareParams, workers: int | str = 1, force: bool = False,
            progress: bool = True, attrs: dict[str, Any] | None = None) -> PrepareReport:
    """Write (or resume) ``cache`` for ``source``; returns what happened, also saved as ``<cache>.report.json``.

    ``workers``: decoder processes, or ``"auto"`` (``auto_workers`` of the clips left to decode). With 1,
    up to ``RECYCLE_AFTER`` clips are decoded in this process, more in a recycled child process.

    Crash safety: rows go to ``<cache>.partial`` with a per-clip status, flushed after every clip
    together with ``<cache>.failures.json``; only a finished file is renamed to ``cache``. Re-running
    the same command resumes the partial file (clips already written or failed are not redone).
    ``attrs``: extra cache attributes (stored as JSON), e.g. the record of a shard (mmvid.data.shards).
    """
    cache = Path(cache)
    report = PrepareReport(cache=cache, total=len(source.clips), notes=list(source.notes), excluded=list(source.excluded))
    start = time.time()
    if not source.clips:
        raise MmvidError(f"dataset {source.dataset!r} has no clips to prepare; check --root")
    pdict = asdict(params)
    if cache.exists() and not force:
        try:
            info = read_info(cache)
            if info.params == json.loads(json.dumps(pdict, default=str)) and info.names == [c.name for c in source.clips]:
                report.already_complete = True
                report.ok = int((info.status == 1).sum())
                return report
        except MmvidError:
            pass
    writer = CacheWriter(cache, [c.name for c in source.clips], [c.label for c in source.clips],
                         [c.split for c in source.clips], source.class_names, params.shapes(), pdict,
                         source.dataset, force=force, intensity=source_intensity(source))
    todo = writer.pending()
    report.skipped_done = report.total - len(todo)
    report.workers = workers = auto_workers(len(todo)) if workers == "auto" else int(workers)
    failures_path = cache.with_name(cache.name + ".failures.json")
    failed = _recorded_failures(failures_path, writer, source) if writer.resumed else []
    columns = [TextColumn("[bold]prepare[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]:.1f} clips/s"), TimeRemainingColumn()]

    def checkpoint() -> None:
        writer.flush()
        write_atomic(failures_path, json.dumps(failed))

    try:
        with Progress(*columns, disable=not progress, transient=False) as bar:
            task = bar.add_task(source.dataset, total=len(todo), rate=0.0)
            t0 = time.time()

            def record(i: int, sample, err: str, log: list[str], done: int) -> None:
                clip = source.clips[i]
                file = str(clip.video or clip.audio or clip.rgb_dir)
                if sample is None:
                    writer.fail(i)
                    failed.append({"name": clip.name, "file": file, "error": err, **({"decoder_log": log} if log else {})})
                else:
                    writer.write(i, sample)
                    if log:
                        report.decoder_messages.append({"name": clip.name, "file": file, "messages": log})
                checkpoint()  # per clip (cheap next to decoding): a killed run loses at most one clip
                bar.update(task, advance=1, rate=done / max(time.time() - t0, 1e-6))

            if workers <= 1 and len(todo) <= RECYCLE_AFTER:  # no start-up cost; leaks bounded as in _run_pool
                for done, i in enumerate(todo, 1):
                    record(*_process_safe(int(i), source.clips[i], params), done)
            else:
                _run_pool(todo, source, params, workers, record, RECYCLE_AFTER)
    except KeyboardInterrupt:
        checkpoint()
        writer.close()
        raise MmvidError(f"prepare interrupted; {writer.partial} keeps the finished clips, re-run the same command to resume") from None
    except BaseException:
        checkpoint()  # keep what was written: the next run resumes from here
        writer.close()
        raise
    report.failed = failed
    versions = library_versions()
    writer.finalize({"versions": versions, "failed": [f["name"] for f in failed], **(attrs or {})})
    failures_path.unlink(missing_ok=True)
    info = read_info(cache)
    report.ok = int((info.status == 1).sum())
    report.empty_classes = unlearnable_classes(info)
    report.seconds = time.time() - start
    write_atomic(cache.with_name(cache.name + ".report.json"), json.dumps(report.to_json(), indent=2))
    return report
