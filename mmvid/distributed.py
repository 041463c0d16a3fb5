"""Process groups for multi-process training on torch.distributed (DDP).

Two ways in, one training function (:func:`mmvid.engine.train`):

* ``mmvid train --gpus N`` -> :func:`launch` starts N local processes with ``torch.multiprocessing``
  (NCCL, one GPU each; without a GPU, N CPU processes with gloo, which is how CI tests this path);
* ``torchrun --nnodes M --nproc-per-node N -m mmvid.cli train ...`` -> every process already has
  ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR`` in its environment; :func:`launch` joins that
  group instead of starting processes.

A failure on one rank ends the run: ``torch.multiprocessing`` stops the other processes when one
exits with an error (torchrun's agent does the same), and the first rank's message is reported as
one :class:`MmvidError` line rather than a hang or N tracebacks.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mmvid.errors import Interrupted, MmvidError

# How long a collective may wait for a peer before the run is declared failed (gloo and NCCL).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def under_torchrun() -> bool:
    """True when this process was started by torchrun (or another launcher) with WORLD_SIZE > 1."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def backend_for(device: str) -> str:
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def limit_threads(local_world: int) -> None:
    # N CPU processes on one machine: split the cores instead of oversubscribing them N times.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))


def init_group(backend: str, rank: int, world_size: int, local_rank: int) -> None:
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank (identity in one process)."""
    if world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size <= 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params, world_size: int) -> None:
    """All-reduce-mean the gradients of modules that DDP does not wrap (a balancer's extra heads).

    A missing gradient counts as zero so that every rank joins the same collectives.
    """
    if world_size <= 1:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)


def sync_buffers(model: torch.nn.Module, world_size: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each rank updates from its own batches)."""
    if world_size <= 1:
        return
    for b in model.buffers():
        dist.broadcast(b, src=0)


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel whose unknown attributes fall through to the wrapped model, so the
    training step can call ``net.unimodal_logits`` or read ``net.modalities`` as on the bare model."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


class StopRequest:
    """Ctrl-C as a request: the first SIGINT sets a flag that the loop checks between
    steps, so the checkpoint it then writes is of a consistent state; a second Ctrl-C more than two
    seconds later interrupts at once. In DDP the flag is all-reduced so every rank stops at the same step.
    """

    def __init__(self) -> None:
        self.flag = False
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.flag and time.monotonic() - self._first > 2.0:
            raise KeyboardInterrupt
        if not self.flag:
            self.flag, self._first = True, time.monotonic()

    def __enter__(self) -> "StopRequest":
        # SIGINT only: SIGTERM must keep killing, it is how a failed rank's peers are stopped.
        for sig in (signal.SIGINT,):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, all_reduce=None) -> bool:
        if all_reduce is None:
            return self.flag
        return bool(all_reduce(torch.tensor([float(self.flag)], dtype=torch.float64))[0] > 0)


# ----------------------------------------------------------------------------- launching


def _worker(local_rank: int, world_size: int, port: int, cfg_dict: dict, cache: str, run_dir: str, resume: bool,
            progress: bool, err_dir: str) -> None:
    """Body of one spawned process: join the group, train, report any failure in ``err_dir``, end the process."""
    from mmvid.config import config_from_dict
    from mmvid.engine import train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = 1
    try:
        cfg = config_from_dict(cfg_dict)
        limit_threads(world_size)
        try:
            init_group(backend_for(cfg.device), local_rank, world_size, local_rank)
            train(cfg, Path(cache), Path(run_dir), resume=resume, progress=progress, rank=local_rank,
                  world_size=world_size)
            dist.barrier()  # no rank tears the group down while a peer's last collective is in flight
        finally:
            # The parent forwards Ctrl-C as well: a copy arriving late must not cut the teardown short.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = 0
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent as one line
        text = str(e) if isinstance(e, MmvidError) else f"{type(e).__name__}: {e}"
        Path(err_dir, f"rank{local_rank}.txt").write_text(text.splitlines()[0] if text else type(e).__name__)
        code = 0 if isinstance(e, Interrupted) else 1  # an interrupted rank ends normally: its peers stay up
    finally:
        try:
            if dist.is_initialized():
                dist.destroy_process_group()
        finally:
            end_rank_process(code)


def end_rank_process(code: int) -> None:
    """End a rank's process at once, without interpreter finalization (spawned ranks here; torchrun
    ranks from the CLI's ``train``, mmvid.cli.torchrun_rank_exit).

    Why: a DDP model keeps the gloo process group alive after ``destroy_process_group`` (its two
    ``pt_gloo_runloop`` work threads, the ``gloo_tcp_loop`` thread and rank 0's store thread are still
    running afterwards, measured with torch 2.14 in /proc/self/task), so on a normal exit these
    threads run on while Python finalizes. A work thread that is still releasing a finished
    collective's tensors there takes the GIL, Python ends that thread (pthread_exit), and the forced
    unwind through torch's noexcept release is ``std::terminate``: "terminate called without an active
    exception", SIGABRT, more likely the busier the machine. Every file of the rank is written and
    closed by now; only the standard streams need flushing.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _first_error(err_dir: Path) -> tuple[str, str] | None:
    """(rank, message) of the rank that failed first, from the files its ``_worker`` wrote."""
    found = sorted(err_dir.glob("rank*.txt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        return None
    return found[0].stem.removeprefix("rank"), found[0].read_text().strip()


def _spawn(cfg, cache: Path, run_dir: Path, resume: bool, progress: bool, worker=_worker) -> dict[str, Any]:
    import torch.multiprocessing as mp

    n = cfg.gpus
    if backend_for(cfg.device) == "nccl" and torch.cuda.device_count() < n:
        raise MmvidError(f"--gpus {n} asks for {n} GPUs but {torch.cuda.device_count()} are visible; "
                         f"lower --gpus or use --device cpu for CPU processes")
    with tempfile.TemporaryDirectory(prefix="mmvid-ranks-") as err_dir:
        ctx = mp.start_processes(worker, args=(n, free_port(), cfg.to_dict(), str(cache), str(run_dir), resume,
                                                progress, err_dir), nprocs=n, join=False, start_method="spawn")

        def forward_interrupt(signum, frame):  # the children save and stop; the parent waits for them
            for p in ctx.processes:
                if p.is_alive():
                    os.kill(p.pid, signal.SIGINT)

        old = signal.signal(signal.SIGINT, forward_interrupt)
        try:
            while not ctx.join():
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            # No file: the rank died of a signal before it could write one; torch names its index.
            rank, text = _first_error(Path(err_dir)) or (str(e.error_index), str(e).strip().splitlines()[-1])
            raise MmvidError(f"distributed training failed on rank {rank}: {text} (the other processes were stopped)") from None
        finally:
            signal.signal(signal.SIGINT, old)
        stopped = _first_error(Path(err_dir))
        if stopped is not None:  # every rank stopped on request at the same step
            raise Interrupted(stopped[1])
    from mmvid.runfiles import read_summary

    summary = read_summary(run_dir)
    if summary is None:
        raise MmvidError(f"distributed training ended without writing {run_dir / 'summary.json'}")
    return summary


def _join_torchrun(cfg, cache: Path, run_dir: Path, resume: bool, progress: bool) -> dict[str, Any] | None:
    from mmvid.engine import train

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    limit_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    backend = backend_for(cfg.device)
    try:
        init_group(backend, rank, world_size, local_rank)
        # Every rank named the run by its own clock; rank 0's name wins.
        run_dir = Path(broadcast_object(str(run_dir), world_size))
        summary = train(cfg, cache, run_dir, resume=resume, progress=progress, rank=rank, world_size=world_size)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return summary if rank == 0 else None


def launch(cfg, cache: Path, run_dir: Path, resume: bool = False, progress: bool = True) -> dict[str, Any] | None:
    """Train with ``cfg.gpus`` local processes, or as one rank of a torchrun job.

    Returns the run summary in the process that should report it (the parent, or torchrun's rank 0)
    and ``None`` in the other torchrun ranks.
    """
    if under_torchrun():
        return _join_torchrun(cfg, cache, run_dir, resume, progress)
    return _spawn(cfg, cache, run_dir, resume, progress)


def shard_order(order: list[int], rank: int, world_size: int) -> list[int]:
    """Rank's share of an epoch's order, as DistributedSampler cuts it (no drop_last): the order is
    padded by repeating its start to a multiple of ``world_size``, then every ``world_size``-th entry."""
    total = -(-len(order) // world_size) * world_size
    padded = (order * -(-total // max(len(order), 1)))[:total]
    return padded[rank:total:world_size]


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (shuffled by ``seed + epoch``, so the order is the same after a resume)
    that can skip the batches an interrupted epoch already did.

    With one process the order is the same permutation, so a 1-process run with batch ``W * b``
    sees the same global batches as a W-process run with ``b`` per rank.
    """

    def __init__(self, n: int, world_size: int, rank: int, seed: int, reorder=None) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0  # samples of this rank to skip, once
        self.reorder = reorder  # the epoch's whole shuffled order -> a reordering of it (Balancer.epoch_order)
        self.order: list[int] | None = None  # the epoch's whole order, fixed by set_epoch

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch's order now (the loop calls this after the balancer's ``on_epoch_start``), so that
        ``len`` counts an order that ``epoch_order`` lengthened (Valuate's resampled copies)."""
        super().set_epoch(epoch)
        self.order = self._whole_order()

    def _whole_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's own permutation
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        return order if self.reorder is None else list(self.reorder(order))

    def __iter__(self):
        order = self.order if self.order is not None else self._whole_order()
        indices = shard_order(order, self.rank, self.num_replicas)[self.skip:]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        n = self.num_samples if self.order is None else -(-len(self.order) // self.num_replicas)
        return n - self.skip
