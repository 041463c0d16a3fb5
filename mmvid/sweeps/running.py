"""Running a sweep: each run an ``mmvid train`` process (what ``--dry-run`` prints is what runs), ``jobs`` at a
time on CPU or one per GPU (``CUDA_VISIBLE_DEVICES``), under one Rich view; a finished run is reused, a
half-finished one resumed (``mmvid train --resume``); Ctrl-C lets the started runs save."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mmvid.config.resolve import plugin_entries
from mmvid.data.cache_lookup import resolve_cache
from mmvid.engine.checks import check_plugins
from mmvid.errors import Interrupted, MmvidError
from mmvid.plugins import check_reachable, loaded
from mmvid.schema import check_option
from mmvid.sweeps.plan import RunSpec, Sweep
from mmvid.sweeps.state import run_state
from mmvid.workspace import runs_dir, writable_dir

KEEP = {"all": (), "best": ("checkpoint_last.pt",), "metrics": ("checkpoint_last.pt", "checkpoint_best.pt")}


def train_command(ws: Path, spec: RunSpec, state: str, program: list[str] | None = None) -> list[str]:
    """The ``mmvid train`` command of a run: a fresh start with the recipe and overrides, or ``--resume``."""
    cmd = (program or ["mmvid"]) + ["train", "--workspace", str(ws)]
    for plugin in loaded():  # the user's plug-ins (--plugin, a recipe's plugins:), given again to every run
        cmd += ["--plugin", plugin]
    if state == "partial":
        return cmd + ["--resume", spec.name]
    cmd += ["--recipe", str(spec.recipe), "--run-name", spec.name]
    for key, value in spec.overrides.items():
        cmd += ["--seed", str(value)] if key == "seed" else ["--set", f"{key}={value}"]
    cmd += [arg for name in spec.loggers for arg in ("--logger", name)]
    return cmd + (["--set", f"track.group={spec.group}"] if spec.group else [])


def run_sweep(console, ws: Path, sweep: Sweep, jobs: int = 1, gpus: int = 0, dry_run: bool = False,
              task: int | None = None, progress: bool = True, keep: str = "all") -> dict[str, str]:
    """Train every run of ``sweep`` that is not done, ``jobs`` at a time (CPU) or one per GPU.

    Returns {run name: done | failed | skipped}. ``task``: run only the run of that index (a Slurm array
    task). Each run's output goes to ``<workspace>/sweeps/<name>/logs/<run>.log``; one Rich view shows the
    whole sweep (runs, and the epochs of each running one). ``keep``: what a finished run keeps besides its
    metrics and summary (a ResNet-18 pair's checkpoint with Adam's state is ~270 MB, two per run): ``all``,
    ``best`` (drops checkpoint_last.pt) or ``metrics`` (drops both).
    """
    runs = _selected_runs(sweep, jobs, gpus, task, keep)
    states = {r.name: run_state(ws, r) for r in runs}
    todo = [r for r in runs if states[r.name] != "done"]
    slots = gpus or jobs
    if dry_run:
        print_commands(console, ws, runs, states, todo, gpus, slots)
        return {r.name: states[r.name] for r in runs}
    check_before_training(ws, todo, gpus)
    out = writable_dir(ws / "sweeps" / sweep.name, "sweep folder")
    logs = writable_dir(out / "logs", "sweep log folder")
    result = {r.name: "skipped" for r in runs if states[r.name] == "done"}
    pool = RunPool(ws, logs, states, gpus, slots, keep)
    result.update(pool.train(console, f"sweep {sweep.name}", len(runs), todo, progress))
    return result


def _selected_runs(sweep: Sweep, jobs: int, gpus: int, task: int | None, keep: str) -> list[RunSpec]:
    """The options of :func:`run_sweep` checked, and the runs it considers: every run of the plan, or the
    ``task``-th only."""
    if keep not in KEEP:
        raise MmvidError(f"--keep {keep!r} is not valid; choose one of: {', '.join(KEEP)}")
    check_option("--jobs", jobs, ge=1, le=1024)
    check_option("--gpus", gpus, ge=0, le=1024)
    runs = sweep.unique
    if task is not None:
        check_option("--task", task, ge=0, le=len(runs) - 1)
        runs = [runs[task]]
    return runs


def print_commands(console, ws: Path, runs: list[RunSpec], states: dict[str, str], todo: list[RunSpec], gpus: int,
                   slots: int) -> None:
    """``--dry-run``: the ``mmvid train`` command of each run not done, with the GPU it would get."""
    for r in runs:
        prefix = f"CUDA_VISIBLE_DEVICES={todo.index(r) % slots} " if gpus and r in todo else ""
        line = shlex.join(train_command(ws, r, states[r.name]))
        console.print(f"# {r.name}: done, reused" if states[r.name] == "done" else prefix + line,
                      soft_wrap=True, highlight=False, markup=False)


def check_before_training(ws: Path, todo: list[RunSpec], gpus: int) -> None:
    """What would make every run fail, checked once before any starts: too few GPUs, a missing cache, a recipe
    whose plug-ins refuse it (a B-MM option under another augmentation) or that another process cannot load."""
    if gpus:
        import torch  # imported here: a sweep on CPU never needs torch in this process

        have = torch.cuda.device_count()
        if have < gpus:
            raise MmvidError(f"--gpus {gpus}: this machine has {have} CUDA device(s); use --gpus {have} "
                             f"(or --jobs N to run N runs at once on CPU)" if have else
                             f"--gpus {gpus}: this machine has no CUDA device; leave --gpus out to train on CPU")
    for name in dict.fromkeys(r.config.data.dataset for r in todo):  # a missing cache fails now, not once per run
        resolve_cache(ws, name)
    for r in todo:  # and so does a recipe whose plug-ins refuse it (a B-MM option under another augmentation)
        try:
            check_plugins(r.config)
            check_reachable(plugin_entries(r.config), "the runs of a sweep (each a process of its own)")
        except MmvidError as e:
            raise MmvidError(f"recipe {r.recipe}: {e}") from None


def sweep_view(console, progress: bool) -> Progress:
    """The Rich view of a sweep: a bar for the whole sweep, and one for the epochs of each running run."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    return Progress(*columns, console=console, disable=not progress)


@dataclass
class RunPool:
    """The runs of a sweep as ``mmvid train`` processes, one per slot (a GPU, or a share of the CPU cores), each
    writing to ``<logs>/<run>.log``."""

    ws: Path
    logs: Path
    states: dict[str, str]  # run name -> its state before the sweep (mmvid.sweeps.state.run_state)
    gpus: int
    slots: int
    keep: str  # mmvid.sweeps.running.KEEP: what a finished run keeps besides its metrics and summary
    # slot -> (run, process, log file, the run's task in the Rich view)
    active: dict[int, tuple[RunSpec, subprocess.Popen, Any, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    finished: dict[str, str] = field(default_factory=dict)  # run name -> done | failed

    def train(self, console, title: str, total: int, todo: list[RunSpec], progress: bool) -> dict[str, str]:
        """Train ``todo``, a run per free slot, until all have finished; returns {run name: done | failed}.
        Ctrl-C waits for the started runs to save, then raises :class:`mmvid.errors.Interrupted`."""
        pending = list(todo)
        # Its runs take Ctrl-C as a request to save and stop (mmvid.distributed.StopRequest installs a handler even
        # when SIGINT was ignored, as in a background job of a script); the sweep must see the same Ctrl-C, or it
        # reports the interrupted runs as failed.
        old_sigint = signal.signal(signal.SIGINT, signal.default_int_handler) if _main_thread() else None
        with sweep_view(console, progress) as bar:
            overall = bar.add_task(title, total=total, completed=total - len(todo),
                                   info=f"{total - len(todo)} reused" if len(todo) < total else "")
            try:
                while pending or self.active:
                    for slot in range(self.slots):
                        if slot not in self.active and pending:
                            self.start(slot, pending.pop(0), bar)
                    time.sleep(0.5)
                    self.collect(console, bar, overall)
            except KeyboardInterrupt:
                self.wait_for_saves()
                raise Interrupted(f"sweep interrupted; finished runs are kept and started ones saved; "
                                  f"run the same command again to continue") from None
            finally:
                if old_sigint is not None:
                    signal.signal(signal.SIGINT, old_sigint)
        return self.finished

    def start(self, slot: int, spec: RunSpec, bar: Progress) -> None:
        """The run's ``mmvid train`` process on ``slot`` (CUDA_VISIBLE_DEVICES, or its share of the threads)."""
        log = (self.logs / f"{spec.name}.log").open("a")
        cmd = train_command(self.ws, spec, self.states[spec.name], [sys.executable, "-m", "mmvid.cli"])
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        threads = max(1, (os.cpu_count() or 1) // self.slots)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_slot_env(slot, self.gpus, threads))
        tid = bar.add_task(f"  {spec.name}" + (f" (GPU {slot})" if self.gpus else ""), total=spec.config.epochs, info="")
        self.active[slot] = (spec, proc, log, tid)

    def collect(self, console, bar: Progress, overall: int) -> None:
        """The epochs each running run has logged; a run that ended leaves its slot, done or failed."""
        for slot, (spec, proc, log, tid) in list(self.active.items()):
            metrics = runs_dir(self.ws) / spec.name / "metrics.jsonl"
            # progress only: lines written so far (the run's files are read, checked, by run_state)
            done_epochs = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
            bar.update(tid, completed=done_epochs)
            if proc.poll() is None:
                continue
            log.close()
            bar.remove_task(tid)
            del self.active[slot]
            ok = proc.returncode == 0 and run_state(self.ws, spec) == "done"
            self.finished[spec.name] = "done" if ok else "failed"
            for name in KEEP[self.keep] if ok else ():  # only once the run is done: resuming needs them
                (runs_dir(self.ws) / spec.name / name).unlink(missing_ok=True)
            bar.update(overall, advance=1)
            if not ok:
                self.failed.append(spec.name)
                console.print(f"[red]run {spec.name} failed[/] (exit {proc.returncode}): "
                              f"{_last_line(self.logs / f'{spec.name}.log')}", soft_wrap=True, highlight=False)
            bar.update(overall, info=f"{len(self.failed)} failed" if self.failed else "")

    def wait_for_saves(self) -> None:
        """After Ctrl-C: the runs got the same Ctrl-C and save a checkpoint; wait for them so that the next sweep
        resumes them."""
        for spec, proc, log, _ in self.active.values():
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def _slot_env(slot: int, gpus: int, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    else:  # each run's intra-op threads: jobs x threads = the cores, not jobs x cores
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["COLUMNS"] = "120"
    return env


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]
