"""Starting multi-process training on torch.distributed (DDP), or joining a group torchrun started.

Two ways in, one training function (:func:`mmvid.engine.loop.train`):

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
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmvid.config import config_from_dict
from mmvid.distributed.collectives import broadcast_object
from mmvid.engine.loop import train
from mmvid.errors import Interrupted, MmvidError
from mmvid.runfiles import read_summary

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


def _worker(local_rank: int, world_size: int, port: int, cfg_dict: dict, cache: str, run_dir: str, resume: bool,
            progress: bool, err_dir: str) -> None:
    """Body of one spawned process: join the group, train, report any failure in ``err_dir``, end the process."""
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
    summary = read_summary(run_dir)
    if summary is None:
        raise MmvidError(f"distributed training ended without writing {run_dir / 'summary.json'}")
    return summary


def _join_torchrun(cfg, cache: Path, run_dir: Path, resume: bool, progress: bool) -> dict[str, Any] | None:
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

