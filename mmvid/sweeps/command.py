"""``mmvid sweep``: plan, then print the commands (``--dry-run``), write a Slurm script (``--emit slurm``), run one
task of a job array (``--task``) or run what is not done; then the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError
from mmvid.sweeps.plan import parse_grid, plan_sweep, write_plan
from mmvid.sweeps.running import KEEP, run_sweep
from mmvid.sweeps.slurm import emit_slurm, slurm_settings
from mmvid.sweeps.stats import aggregate, sweep_setups
from mmvid.sweeps.tables import print_summary, write_tables


def sweep_command(console, ws: Path, targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
                  dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None,
                  jobs: int = 1, gpus: int = 0, dry_run: bool = False, emit: str | None = None,
                  task: int | None = None, collect: bool = False, progress: bool = True, keep: str = "all",
                  baseline: str | None = None, protocol: str | None = None,
                  loggers: list[str] | None = None, slurm: dict[str, Any] | None = None,
                  grid: dict[str, list[Any]] | list[str] | None = None) -> list[Path]:
    """Plan, then one of: print the commands (``dry_run``), write a Slurm script (``emit``), run one task
    (``task``, for a job array), or run what is not done; then aggregate and write the tables (unless a
    single task ran). ``protocol``: see :func:`plan_sweep`. ``loggers``: ``--logger`` for every run; the runs
    with loggers are grouped under the sweep's name (:func:`track_runs`). ``slurm``: the job array's settings
    (``--slurm KEY=VALUE``, :class:`SlurmSettings`; they override the recipes' ``slurm:`` section), checked
    before anything is planned. ``grid``: ``--grid KEY=v1,v2`` items, or key -> its values (:func:`plan_sweep`).
    Returns the files written."""
    if emit not in (None, "slurm"):
        raise MmvidError(f"--emit {emit!r} is not supported; choose: slurm")
    if slurm and not emit:
        raise MmvidError("--slurm sets the job array of --emit slurm; add --emit slurm, or leave --slurm out")
    slurm_settings(slurm)  # a bad --slurm value fails before the recipes are read
    sweep = plan_sweep(targets, seeds=seeds, quick=quick, epochs=epochs, dataset=dataset, sets=sets, only=only,
                       protocol=protocol, grid=_grid(grid))
    track_runs(sweep, loggers or [])
    for line in sweep.skipped:
        console.print(f"[yellow]note:[/] {line}", soft_wrap=True, highlight=False)
    out = ws / "sweeps" / sweep.name
    n_rows, n_runs = len({r.row_id for r in sweep.runs}), len(sweep.unique)
    shared = f", {len(sweep.runs) - n_runs} cells reuse a run of the same config" if n_runs < len(sweep.runs) else ""
    n_protocols = len({r.config.protocol for r in sweep.runs})
    shared = (f" x {n_protocols} protocols" if n_protocols > 1 else "") + shared
    if emit:
        if keep not in KEEP:
            raise MmvidError(f"--keep {keep!r} is not valid; choose one of: {', '.join(KEEP)}")
        settings = slurm_settings(slurm, sweep.slurm, sweep.slurm_source)
        script = emit_slurm(ws, sweep, keep=keep, baseline=baseline, settings=settings)
        write_plan(out, sweep)
        console.print(f"wrote {script}: a job array of {n_runs} runs ({n_rows} recipes x {seeds} seeds{shared})",
                      soft_wrap=True, highlight=False)
        return [script]
    if dry_run:
        run_sweep(console, ws, sweep, jobs=jobs, gpus=gpus, dry_run=True, task=task)
        return []
    if not collect:
        console.print(f"sweep {sweep.name}: {n_runs} runs ({n_rows} recipes x {seeds} seeds{shared}) -> {out}",
                      soft_wrap=True, highlight=False)
        result = run_sweep(console, ws, sweep, jobs=jobs, gpus=gpus, task=task, progress=progress, keep=keep)
        if task is not None:
            return []
        failed = [n for n, s in result.items() if s == "failed"]
    else:
        failed = []
    write_plan(out, sweep)
    cells, missing = aggregate(ws, sweep, baseline)
    note = (f"{len(missing)} of {n_runs} runs are not finished and are left out: {', '.join(missing[:6])}"
            + (", ..." if len(missing) > 6 else "")) if missing else ""
    if sweep.skipped:  # in the table's note too: a reference column without these rows is not an oversight
        note = " ".join([note, *[f"{line}." for line in sweep.skipped]]).strip()
    setups = sweep_setups(ws, sweep)  # what the finished runs were trained on (run.json)
    if len(setups) > 1:
        note = " ".join([note, f"The runs were trained on {len(setups)} different setups (run.json): "
                         + "; ".join(f"{s} ({n} run{'' if n == 1 else 's'})" for s, n in setups.items()) + "."]).strip()
    elif setups:
        note = " ".join([note, f"Every run was trained on {next(iter(setups))} (run.json)."]).strip()
    over = ", ".join(sweep.options)
    files = write_tables(cells, out, f"mmvid sweep {' '.join(targets)} ({over})", note, baseline)
    print_summary(console, cells)
    for p in files:
        console.print(f"wrote {p}", soft_wrap=True, highlight=False)
    if failed:
        raise MmvidError(f"{len(failed)} runs failed ({', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''}); "
                         f"their logs are in {out / 'logs'}; the table has the other runs")
    if missing:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
    return files


def _grid(grid: dict[str, list[Any]] | list[str] | None) -> dict[str, list[str]] | None:
    """``--grid`` items (``KEY=v1,v2``) or a mapping key -> values (the Python API) as key -> value texts."""
    if isinstance(grid, dict):
        return parse_grid([f"{k}={','.join(map(str, vs if isinstance(vs, (list, tuple)) else [vs]))}"
                           for k, vs in grid.items()])
    return parse_grid(grid)


def track_runs(sweep, loggers: list[str]) -> None:
    """``--logger`` for every run of ``sweep`` (checked first: names, packages), and the runs that log (by
    ``--logger`` or their recipe's ``logger:``) grouped under the sweep's name: one W&B group, one TensorBoard
    folder ``<workspace>/sweeps/<name>/tensorboard``. Neither changes what a run learns (nor its name)."""
    from mmvid.config import TrainConfig
    from mmvid.tracking.base import check_loggers

    check = TrainConfig(logger=list(loggers))
    check_loggers(check)
    for run in sweep.runs:
        run.loggers = list(check.logger)
        run.group = sweep.name if run.loggers or run.config.logger else None
    sweep.options += [f"--logger {name}" for name in check.logger]
