"""The decoder pool of `prepare` keeps its memory flat: a bounded number of results in flight, each dropped
once written, and decoder processes replaced every `recycle_after` clips. A fake decoder (cheap, big
results) and a slow writer make results pile up if anything holds them."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmvid.data import prepare as P
from mmvid.data.sources import ClipSpec, Source


class Tracked:
    """Counts, in the parent, the results that have arrived from a worker and are still alive (held by the pool
    or by the writer): unpickling one increments ``LIVE``, freeing it decrements."""

    def __reduce__(self):
        return _arrived, ()

    def __del__(self):
        with LOCK:
            LIVE[0] -= 1


def _arrived() -> Tracked:
    with LOCK:
        LIVE[0] += 1
    return Tracked()


LIVE, LOCK = [0], threading.Lock()


def fake_decode(i: int, clip: ClipSpec, params) -> tuple[int, dict, str]:
    """Stands in for ``_process_safe`` in the spawned workers (importable by name): instant, 1 MB per result."""
    return i, {"frames": np.full(1 << 20, i % 256, dtype=np.uint8), "pid": np.array(os.getpid()), "live": Tracked()}, ""


def fake_source(n: int) -> Source:
    return Source("fake", ["a"], [ClipSpec(name=f"a/{k}", label=0, split="train", video=Path(f"{k}.mp4"))
                                   for k in range(n)])


@pytest.mark.parametrize("workers", [1, 2])
def test_pool_streams_results_and_recycles_its_workers(workers):
    recycle = 4
    per_pool = recycle * workers  # > 2 * workers, so that a pool submitting its whole share at once would show
    n = 3 * per_pool
    seen, pids, max_live = [], [], 0
    LIVE[0] = 0

    def record(i, sample, err, done):
        nonlocal max_live
        assert err == "" and done == len(seen) + 1 and (sample["frames"] == i % 256).all()
        seen.append(i)
        pids.append(int(sample["pid"]))
        time.sleep(0.1)  # a slow writer: the workers run ahead of it
        max_live = max(max_live, LIVE[0])

    P._run_pool(np.arange(n), fake_source(n), None, workers, record, recycle_after=recycle, decode=fake_decode)
    assert sorted(seen) == list(range(n))
    # results in this process (arrived, being written, or waiting): never more than the 2 per worker submitted
    # (the pool used to keep every result until the end, so this grew with the number of clips)
    assert 1 <= max_live <= 2 * workers, max_live
    gc.collect()
    assert LIVE[0] == 0  # every written result was freed
    # a fresh pool every recycle * workers clips: no process decoded more than that, later pools have new pids
    assert max(pids.count(p) for p in set(pids)) <= per_pool
    pools = [set(pids[k:k + per_pool]) for k in range(0, n, per_pool)]
    assert len(pools) == 3 and all(a.isdisjoint(b) for k, a in enumerate(pools) for b in pools[k + 1:])
    assert os.getpid() not in pids


def test_auto_workers():
    assert P.auto_workers(0, cpus=16) == P.auto_workers(49, cpus=16) == 1  # start-up (2-3 s a worker) dominates
    assert P.auto_workers(50, cpus=16) == 2 and P.auto_workers(200, cpus=16) == 8
    assert P.auto_workers(100_000, cpus=16) == 16 and P.auto_workers(100_000, cpus=1) == 1
    assert P.auto_workers(10_000) == len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else True
