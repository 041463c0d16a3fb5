"""``mmvid sweep``: every recipe of a paper table (a folder of recipes) times every seed, one ``mmvid train``
run each, then the table in the paper's layout with the user's numbers beside the published ones.

A sweep is a plan (:func:`plan_sweep`): one :class:`RunSpec` per recipe and seed, in a fixed order, each with a
run name derived from the recipe's path (``sweep-table1-cremad-concat-mm-s0``), so that running the same
command again finds its runs: a finished run is reused, a half-finished one resumed (``mmvid train --resume``),
the others started. Runs are ``mmvid train`` processes (what ``--dry-run`` prints is what runs), ``jobs`` at a
time on CPU or one per GPU (``CUDA_VISIBLE_DEVICES``); ``--emit slurm`` writes a job array whose task k runs
run k of the same plan. :func:`aggregate` turns the finished runs into cells: mean, sample std and a 95 %
confidence interval (Student's t over seeds) of the last-epoch and of the best-validation-epoch test
accuracy, beside the recipe's ``paper.accuracy``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from mmvid.config import ABSENT_MEANS, RECIPES, TrainConfig, canonical_dict, read_recipe, resolve_config
from mmvid.errors import Interrupted, MmvidError
from mmvid.workspace import write_atomic

QUICK_EPOCHS = 2
# Settings of how a run executes, not of what it learns: a run is reused whatever they were.
EXECUTION_KEYS = ("run_name", "device", "gpus", "data.workers", "data.cache_in_memory", "data.cache_on_gpu")


@dataclass
class RunSpec:
    """One training run of a sweep: a recipe at a seed, with the sweep-wide overrides."""

    name: str  # run folder under <workspace>/runs
    row_id: str  # the recipe's id (path under recipes/ without the seed); --only matches it
    recipe: Path
    seed: int
    table: str  # the table a cell belongs to (paper.table, else the name of the folder the sweep was given)
    row: str  # the row label (paper.row, else the recipe's file name)
    column: str  # the column label (paper.column, else the cache name)
    paper: float | None  # the published accuracy in %, if the recipe gives it
    overrides: dict[str, Any]  # dotted config keys given to every run of the sweep
    config: TrainConfig = field(repr=False, default=None)  # the resolved config this run trains with


@dataclass
class Sweep:
    name: str  # output folder under <workspace>/sweeps
    targets: list[str]  # what the user named (for the commands that continue or collect the sweep)
    runs: list[RunSpec]  # one per cell and seed; rows with the same config share a run (Table 2's Concat is Table 1's)
    options: list[str]  # the sweep's own flags that shape its plan (--seeds, --quick, --set ...)

    @property
    def unique(self) -> list[RunSpec]:
        """The runs to train, each once, in plan order (``--task k`` is the k-th of these)."""
        first: dict[str, RunSpec] = {}
        for r in self.runs:
            first.setdefault(r.name, r)
        return list(first.values())


# ----------------------------------------------------------------------------- planning


def _recipe_files(target: str) -> list[Path]:
    p = Path(target)
    if not p.exists():  # a name in mmvid's recipes/, with or without the leading recipes/
        inside = RECIPES / (p.relative_to("recipes") if p.parts[:1] == ("recipes",) else p)
        p = inside if inside.exists() else p
    if p.is_dir():
        files = sorted(p.rglob("*.yaml"))
        if not files:
            raise MmvidError(f"no recipes (*.yaml) under {p}; give a folder of recipes such as recipes/table1/cremad")
        return files
    if p.is_file():
        return [p]
    raise MmvidError(f"{target!r} is neither a recipe nor a folder of recipes (looked in . and {RECIPES})")


def _recipe_id(path: Path) -> str:
    """recipes/table1/cremad/03-decision.yaml -> table1-cremad-decision (numeric prefixes only order rows)."""
    path = path.resolve()
    try:
        parts = list(path.relative_to(RECIPES.resolve()).with_suffix("").parts)
    except ValueError:
        parts = list(path.with_suffix("").parts[-3:])
    parts[-1] = re.sub(r"^\d+-", "", parts[-1])
    return _plain("-".join(parts), "recipe", "_", 90)


def _plain(text: str, fallback: str, sub: str = "-", limit: int = 100) -> str:
    """``text`` made a plain name (mmvid.schema.is_plain_name), for the run and sweep names derived from
    paths: other characters become ``sub``, leading dots and dashes go, and a name longer than ``limit``
    keeps its start and a hash of the whole (so that two long names stay apart)."""
    name = re.sub(r"[^A-Za-z0-9_.-]", sub, text).lstrip(".-") or fallback
    if len(name) > limit:
        name = f"{name[:limit - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


def _target_name(target: str) -> str:
    """The part of a sweep's name that a target gives: its recipe id (a file), else its path (``.`` and
    ``..``: the folder's own name)."""
    p = Path(target)
    if p.suffix:
        return _recipe_id(p)
    text = re.sub(r"[^A-Za-z0-9_.-]", "-", str(target).strip("/")).removeprefix("recipes-")
    return _plain(text, "", limit=60) or _plain(p.resolve().name, "sweep", limit=60)


def plan_sweep(targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
               dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None) -> Sweep:
    """Every recipe under ``targets`` at seeds 0..seeds-1, each config resolved and checked now.

    ``quick`` trains ``epochs`` (default 2) epochs per run and keeps every row; ``dataset`` and ``sets``
    override every run's config; ``only``: comma-separated patterns of recipe ids (``*mm*``).
    Runs whose config differs from the plain recipes get a name with a hash of the overrides.
    """
    from mmvid.schema import check_name, check_option

    check_option("--seeds", seeds, ge=1, le=1000)
    if epochs is not None:
        check_option("--epochs", epochs, ge=1, le=1_000_000)
    overrides: dict[str, Any] = dict(sets or {})
    if dataset is not None:  # "" too: the config's rule refuses an empty cache name
        overrides["data.dataset"] = dataset
    if quick or epochs is not None:
        overrides["epochs"] = epochs or QUICK_EPOCHS
    sources = {**{k: f"--set {k}" for k in sets or {}}, "data.dataset": "--dataset", "epochs": "--epochs"}  # for errors
    # (recipe, the table a row falls in without paper.table: the target's name; "." and ".." by their folder's)
    files = [(f, Path(t).resolve().stem or str(t)) for t in targets for f in _recipe_files(t)]
    patterns = [p.strip() for p in (only or "").split(",") if p.strip()]
    tag = ""
    if overrides:
        digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]
        tag = f"-quick{digest}" if quick else f"-{digest}"
    runs: list[RunSpec] = []
    seen: dict[str, Path] = {}
    by_config: dict[str, str] = {}  # resolved config -> the run name that trains it
    for f, target in files:
        rid = _recipe_id(f)
        short = re.sub(r"^\d+-", "", f.stem)  # the recipe's own name: --only concat-mm
        if patterns and not any(fnmatch(rid, p) or fnmatch(short, p) for p in patterns):
            continue
        if rid in seen and seen[rid].resolve() != f.resolve():
            raise MmvidError(f"recipes {seen[rid]} and {f} would share the run names {rid}-*; rename one")
        if rid in seen:
            continue
        seen[rid] = f
        recipe = read_recipe(f)
        paper = recipe.paper or {}
        for seed in range(seeds):
            over = {**overrides, "seed": seed}
            try:  # a bad recipe, --set or plug-in setting fails before anything runs, naming the recipe
                cfg = resolve_config(recipe.config, over, sources)
            except MmvidError as e:
                raise MmvidError(f"recipe {f}: {e}") from None
            key = json.dumps({**cfg.to_dict(), "run_name": None}, sort_keys=True, default=str)
            name = by_config.setdefault(key, f"sweep-{rid}{tag}-s{seed}")
            cfg.run_name = check_name("the run name of a sweep", name)
            runs.append(RunSpec(name=name, row_id=rid, recipe=f, seed=seed,
                                table=str(paper.get("table", target)),
                                row=paper.get("row", short),
                                column=paper.get("column", cfg.data.dataset or f.parent.name),
                                paper=float(paper["accuracy"]) if "accuracy" in paper else None,
                                overrides=over, config=cfg))
    if not runs:
        raise MmvidError(f"--only {only!r} matches no recipe under {', '.join(targets)}")
    base = _plain("_".join(_target_name(t) for t in targets), "sweep")
    options = [f"--seeds {seeds}"] + (["--quick"] if quick else []) + ([f"--epochs {epochs}"] if epochs else [])
    options += [f"--dataset {dataset}"] if dataset else []
    options += [f"--set {k}={v}" for k, v in (sets or {}).items()] + ([f"--only {only}"] if only else [])
    # The folder sweeps/<name>: a plain name, as every name that becomes a path (mmvid.schema)
    return Sweep(name=check_name("the sweep's name", f"{base}{tag}"), targets=list(targets), runs=runs, options=options)


# ----------------------------------------------------------------------------- state of a run


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("args", "fusion_args", "aux_loss"):  # mappings compared whole
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_difference(saved: dict[str, Any], cfg: TrainConfig) -> str | None:
    """The first config key where a run folder's saved config differs from what the sweep would train."""
    import yaml

    # The saved config as today's layout, every plug-in setting filled in: a run saved before a setting moved
    # (augment.beta -> B-MM's augment.args.beta) or was declared compares equal to the same settings now
    # (and so does a config built in code, whose plug-in mappings may name only some settings).
    saved = canonical_dict(saved)
    want, have = _flat(canonical_dict(cfg.to_dict())), _flat(saved)
    default = {**_flat(TrainConfig().to_dict()), **ABSENT_MEANS}
    for key, value in want.items():
        if key in EXECUTION_KEYS or (key == "data.dataset" and value is None):
            continue
        # A key the run's mmvid did not have yet was trained at its default (then, ABSENT_MEANS: not today's).
        there = have.get(key, default.get(key, "<missing>"))
        # Round-trip through YAML, as the run saved it, so that 1e-3 and 0.001 compare equal.
        if yaml.safe_load(yaml.safe_dump(value)) != there:
            return f"{key}: {there!r} there, {value!r} in the sweep"
    return None


def run_state(ws: Path, spec: RunSpec) -> str:
    """``done`` (summary.json of all its epochs), ``partial`` (a folder to resume) or ``new``.

    A folder trained with another config (the recipe was edited since) is an error naming the key,
    never silently reused or overwritten.
    """
    from mmvid.workspace import check_run_folder, run_path

    run = run_path(ws, spec.name, "the run name of a sweep")
    check_run_folder(run, "rename the recipe (its runs are named after it) or move that folder")
    return folder_state(run, spec.config, ", or run the sweep with other options")


def folder_state(run: Path, cfg: TrainConfig, hint: str = "") -> str:
    """:func:`run_state` of the run folder ``run`` for ``cfg`` (also used by ``mmvid diagnose``);
    ``hint`` ends the error of a folder trained with another config."""
    import yaml

    if not (run / "config.yaml").exists():
        return "new"
    try:
        saved = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as e:
        raise MmvidError(f"{run / 'config.yaml'} cannot be read ({str(e).splitlines()[0]}); remove {run} to retrain it") from None
    diff = config_difference(saved if isinstance(saved, dict) else {}, cfg)
    if diff:
        raise MmvidError(f"run {run} was trained with another config ({diff}); remove that folder to retrain it{hint}")
    summary = run / "summary.json"
    if summary.exists():
        try:
            if json.loads(summary.read_text()).get("epochs") == cfg.epochs:
                return "done"
        except (json.JSONDecodeError, OSError):
            pass
    return "partial"


def train_command(ws: Path, spec: RunSpec, state: str, program: list[str] | None = None) -> list[str]:
    """The ``mmvid train`` command of a run: a fresh start with the recipe and overrides, or ``--resume``."""
    cmd = (program or ["mmvid"]) + ["train", "--workspace", str(ws)]
    if state == "partial":
        return cmd + ["--resume", spec.name]
    cmd += ["--recipe", str(spec.recipe), "--run-name", spec.name]
    for key, value in spec.overrides.items():
        cmd += ["--seed", str(value)] if key == "seed" else ["--set", f"{key}={value}"]
    return cmd


# ----------------------------------------------------------------------------- running


def _slot_env(slot: int, gpus: int, threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(slot)
    else:  # each run's intra-op threads: jobs x threads = the cores, not jobs x cores
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["COLUMNS"] = "120"
    return env


KEEP = {"all": (), "best": ("checkpoint_last.pt",), "metrics": ("checkpoint_last.pt", "checkpoint_best.pt")}


def run_sweep(console, ws: Path, sweep: Sweep, jobs: int = 1, gpus: int = 0, dry_run: bool = False,
              task: int | None = None, progress: bool = True, keep: str = "all") -> dict[str, str]:
    """Train every run of ``sweep`` that is not done, ``jobs`` at a time (CPU) or one per GPU.

    Returns {run name: done | failed | skipped}. ``task``: run only the run of that index (a Slurm array
    task). Each run's output goes to ``<workspace>/sweeps/<name>/logs/<run>.log``; one Rich view shows the
    whole sweep (runs, and the epochs of each running one). ``keep``: what a finished run keeps besides its
    metrics and summary (a ResNet-18 pair's checkpoint with Adam's state is ~270 MB, two per run): ``all``,
    ``best`` (drops checkpoint_last.pt) or ``metrics`` (drops both).
    """
    if keep not in KEEP:
        raise MmvidError(f"--keep {keep!r} is not valid; choose one of: {', '.join(KEEP)}")
    from mmvid.schema import check_option
    from mmvid.workspace import writable_dir

    check_option("--jobs", jobs, ge=1, le=1024)
    check_option("--gpus", gpus, ge=0, le=1024)
    runs = sweep.unique
    if task is not None:
        check_option("--task", task, ge=0, le=len(runs) - 1)
        runs = [runs[task]]
    states = {r.name: run_state(ws, r) for r in runs}
    todo = [r for r in runs if states[r.name] != "done"]
    slots = gpus or jobs
    if dry_run:
        for i, r in enumerate(runs):
            prefix = f"CUDA_VISIBLE_DEVICES={todo.index(r) % slots} " if gpus and r in todo else ""
            line = shlex.join(train_command(ws, r, states[r.name]))
            console.print(f"# {r.name}: done, reused" if states[r.name] == "done" else prefix + line,
                          soft_wrap=True, highlight=False, markup=False)
        return {r.name: states[r.name] for r in runs}
    if gpus:
        import torch

        have = torch.cuda.device_count()
        if have < gpus:
            raise MmvidError(f"--gpus {gpus}: this machine has {have} CUDA device(s); use --gpus {have} "
                             f"(or --jobs N to run N runs at once on CPU)" if have else
                             f"--gpus {gpus}: this machine has no CUDA device; leave --gpus out to train on CPU")
    from mmvid.workflows import check_plugins
    from mmvid.workspace import resolve_cache

    for name in dict.fromkeys(r.config.data.dataset for r in todo):  # a missing cache fails now, not once per run
        resolve_cache(ws, name)
    for r in todo:  # and so does a recipe whose plug-ins refuse it (a B-MM option under another augmentation)
        try:
            check_plugins(r.config)
        except MmvidError as e:
            raise MmvidError(f"recipe {r.recipe}: {e}") from None
    out = writable_dir(ws / "sweeps" / sweep.name, "sweep folder")
    logs = writable_dir(out / "logs", "sweep log folder")
    threads = max(1, (os.cpu_count() or 1) // slots)
    result = {r.name: "skipped" for r in runs if states[r.name] == "done"}
    program = [sys.executable, "-m", "mmvid.cli"]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mmvid.workspace import runs_dir

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    pending = list(todo)
    active: dict[int, tuple[RunSpec, subprocess.Popen, Any, int]] = {}  # slot -> (run, process, log file, task id)
    # Its runs take Ctrl-C as a request to save and stop (mmvid.distributed.StopRequest installs a handler even
    # when SIGINT was ignored, as in a background job of a script); the sweep must see the same Ctrl-C, or it
    # reports the interrupted runs as failed.
    old_sigint = signal.signal(signal.SIGINT, signal.default_int_handler) if _main_thread() else None
    failed: list[str] = []
    with Progress(*columns, console=console, disable=not progress) as bar:
        overall = bar.add_task(f"sweep {sweep.name}", total=len(runs), completed=len(runs) - len(todo),
                               info=f"{len(runs) - len(todo)} reused" if len(todo) < len(runs) else "")
        try:
            while pending or active:
                for slot in range(slots):
                    if slot in active or not pending:
                        continue
                    spec = pending.pop(0)
                    log = (logs / f"{spec.name}.log").open("a")
                    cmd = train_command(ws, spec, states[spec.name], program)
                    log.write(f"$ {shlex.join(cmd)}\n")
                    log.flush()
                    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_slot_env(slot, gpus, threads))
                    tid = bar.add_task(f"  {spec.name}" + (f" (GPU {slot})" if gpus else ""), total=spec.config.epochs,
                                       info="")
                    active[slot] = (spec, proc, log, tid)
                time.sleep(0.5)
                for slot, (spec, proc, log, tid) in list(active.items()):
                    metrics = runs_dir(ws) / spec.name / "metrics.jsonl"
                    done_epochs = sum(1 for ln in metrics.read_text().splitlines() if ln.strip()) if metrics.exists() else 0
                    bar.update(tid, completed=done_epochs)
                    if proc.poll() is None:
                        continue
                    log.close()
                    bar.remove_task(tid)
                    del active[slot]
                    ok = proc.returncode == 0 and run_state(ws, spec) == "done"
                    result[spec.name] = "done" if ok else "failed"
                    for name in KEEP[keep] if ok else ():  # only once the run is done: resuming needs them
                        (runs_dir(ws) / spec.name / name).unlink(missing_ok=True)
                    bar.update(overall, advance=1)
                    if not ok:
                        failed.append(spec.name)
                        console.print(f"[red]run {spec.name} failed[/] (exit {proc.returncode}): "
                                      f"{_last_line(logs / f'{spec.name}.log')}", soft_wrap=True, highlight=False)
                    bar.update(overall, info=f"{len(failed)} failed" if failed else "")
        except KeyboardInterrupt:
            # The runs got the same Ctrl-C and save a checkpoint; wait for them so that the next sweep resumes them.
            for spec, proc, log, _ in active.values():
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                log.close()
            raise Interrupted(f"sweep interrupted; finished runs are kept and started ones saved; "
                              f"run the same command again to continue") from None
        finally:
            if old_sigint is not None:
                signal.signal(signal.SIGINT, old_sigint)
    return result


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _last_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1]


# ----------------------------------------------------------------------------- aggregating


@dataclass
class Cell:
    """One table cell: the seeds of a recipe, summarised."""

    table: str
    row: str
    column: str
    recipe: str
    seeds: list[int]
    last: list[float]  # test accuracy % at the last epoch, per seed
    best: list[float]  # test accuracy % at the best-validation epoch, per seed
    paper: float | None
    name: str = ""  # the recipe's own name (its file name without the order prefix), for --baseline
    stats: dict[str, dict[str, float]] = field(default_factory=dict)  # last|best -> mean, std, ci_lo, ci_hi
    # last|best -> the same statistics of (this cell - the baseline's) per seed, over the seeds both have
    versus: dict[str, dict[str, float]] = field(default_factory=dict)


def summarize(values: list[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample std (n - 1) and the ``level`` confidence interval of the mean, mean +- t_{(1+level)/2, n-1}
    std / sqrt(n) (Student's t: a handful of seeds). One seed: std and interval are NaN."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "std": math.nan, "ci_lo": math.nan, "ci_hi": math.nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_lo": mean - half, "ci_hi": mean + half}


def aggregate(ws: Path, sweep: Sweep, baseline: str | None = None) -> tuple[list[Cell], list[str]]:
    """Cells from the finished runs of the sweep (in plan order), and the names of runs not finished.

    ``baseline`` (a recipe name such as ``concat``, or a row label): each other cell of the same table and
    column also gets the statistics of its per-seed difference to that cell (paired by seed: the same seed
    gives both runs the same split and initialisation), so that "outside the interval" is a paired test.
    """
    from mmvid.workspace import runs_dir

    cells: dict[str, Cell] = {}
    missing: list[str] = []
    for r in sweep.runs:
        cell = cells.setdefault(r.row_id, Cell(r.table, r.row, r.column, str(r.recipe), [], [], [], r.paper,
                                                re.sub(r"^\d+-", "", r.recipe.stem)))
        if run_state(ws, r) != "done":
            missing += [r.name] if r.name not in missing else []
            continue
        s = json.loads((runs_dir(ws) / r.name / "summary.json").read_text())
        cell.seeds.append(r.seed)
        cell.last.append(100.0 * float(s["last"]["test_acc"]))
        cell.best.append(100.0 * float(s["best"]["test_acc"]))
    for cell in cells.values():
        cell.stats = {"last": summarize(cell.last), "best": summarize(cell.best)}
    if baseline:
        bases = {(c.table, c.column): c for c in cells.values() if baseline in (c.name, c.row)}
        if not bases:
            raise MmvidError(f"--baseline {baseline!r} is no row of this sweep; choose a recipe name or row label: "
                             + ", ".join(dict.fromkeys(c.name for c in cells.values())))
        for cell in cells.values():
            base = bases.get((cell.table, cell.column))
            if base is None or base is cell:
                continue
            for which in ("last", "best"):
                mine, theirs = (dict(zip(c.seeds, getattr(c, which))) for c in (cell, base))
                cell.versus[which] = summarize([mine[s] - theirs[s] for s in mine if s in theirs])
    return list(cells.values()), missing


def _fmt(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    if st["n"] < 2:
        return f"{st['mean']:.2f} (1 seed)"
    return f"{st['mean']:.2f} ± {st['std']:.2f} [{st['ci_lo']:.2f}, {st['ci_hi']:.2f}]"


def _paper(cell: Cell, which: str) -> str:
    if cell.paper is None:
        return ""
    st = cell.stats[which]
    if not st["n"]:
        return f" · paper {cell.paper:.2f}"
    inside = "" if math.isnan(st["ci_lo"]) else (" in CI" if st["ci_lo"] <= cell.paper <= st["ci_hi"] else " outside CI")
    return f" · paper {cell.paper:.2f} (Δ {st['mean'] - cell.paper:+.2f},{inside})"


def write_tables(cells: list[Cell], out: Path, title: str, note: str = "", baseline: str | None = None) -> list[Path]:
    """table.md (the paper's layout, a table per paper table: last epoch, then best validation epoch),
    table.csv (one line per cell with every number) and table.png / .svg."""
    tables: dict[str, list[Cell]] = {}
    for c in cells:
        tables.setdefault(c.table, []).append(c)
    md = [f"# {title}", ""] + ([note, ""] if note else [])
    md += ["Each cell: test accuracy %, mean ± std over seeds [95 % confidence interval, Student's t]; "
           "the paper's figure and the difference (Δ = ours − paper).", ""]
    for table, cs in tables.items():
        rows = list(dict.fromkeys(c.row for c in cs))
        columns = list(dict.fromkeys(c.column for c in cs))
        by = {(c.row, c.column): c for c in cs}
        for which, label in (("last", "last epoch"), ("best", "best-validation epoch")):
            md += [f"## {'Table ' if table.isdigit() else ''}{table}: {label}", "",
                   "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
            for row in rows:
                cells_ = [(_fmt(by[row, col].stats[which]) + _paper(by[row, col], which)) if (row, col) in by else ""
                          for col in columns]
                md.append("| " + " | ".join([row, *cells_]) + " |")
            md.append("")
        if baseline:
            md += [f"## {'Table ' if table.isdigit() else ''}{table}: difference to {baseline}, paired by seed", "",
                   "Each cell: mean difference (test accuracy points) [95 % CI, Student's t over the per-seed "
                   "differences], last epoch; then best-validation epoch. **Bold**: the interval excludes 0.", "",
                   "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
            for row in rows:
                cells_ = [" / ".join(_versus(by[row, col].versus[w]) for w in ("last", "best"))
                          if (row, col) in by and by[row, col].versus else "" for col in columns]
                md.append("| " + " | ".join([row, *cells_]) + " |")
            md.append("")
    seeds_n = {len(c.last) for c in cells}
    md.append(f"Seeds per cell: {', '.join(str(n) for n in sorted(seeds_n))}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with (out / "table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "row", "column", "recipe", "n_seeds", "seeds",
                    *[f"{which}_{k}" for which in ("last", "best") for k in ("mean", "std", "ci95_lo", "ci95_hi")],
                    "paper", "diff_last", "diff_best", "last_per_seed", "best_per_seed",
                    *[f"vs_baseline_{which}_{k}" for which in ("last", "best") for k in ("mean", "ci95_lo", "ci95_hi")]])
        for c in cells:
            sl, sb = c.stats["last"], c.stats["best"]
            w.writerow([c.table, c.row, c.column, c.recipe, len(c.last), " ".join(map(str, c.seeds)),
                        *[_num(st[k]) for st in (sl, sb) for k in ("mean", "std", "ci_lo", "ci_hi")],
                        "" if c.paper is None else c.paper,
                        "" if c.paper is None or not c.last else _num(sl["mean"] - c.paper),
                        "" if c.paper is None or not c.best else _num(sb["mean"] - c.paper),
                        " ".join(f"{v:.4f}" for v in c.last), " ".join(f"{v:.4f}" for v in c.best),
                        *[_num(c.versus[which][k]) if which in c.versus else "" for which in ("last", "best")
                          for k in ("mean", "ci_lo", "ci_hi")]])
    return [out / "table.md", out / "table.csv", *plot_table(cells, out / "table", title)]


def _versus(st: dict[str, float]) -> str:
    if st["n"] < 2:
        return f"{st['mean']:+.2f} ({st['n']} seed)"
    text = f"{st['mean']:+.2f} [{st['ci_lo']:+.2f}, {st['ci_hi']:+.2f}]"
    return f"**{text}**" if st["ci_lo"] > 0 or st["ci_hi"] < 0 else text


def _num(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def plot_table(cells: list[Cell], out: Path, title: str) -> list[Path]:
    """One panel per column (data set or ablation value): each row's mean with its 95 % interval, last
    epoch and best-validation epoch, and the paper's figure as a diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.table, c.column), []).append(c)
    n = len(groups)
    height = max(len(cs) for cs in groups.values()) * 0.45 + 1.6
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, height), squeeze=False, sharey=False)
    for ax, ((table, column), cs) in zip(axes[0], groups.items()):
        ys = range(len(cs))
        for which, dy, color, label in (("last", -0.15, "tab:blue", "last epoch"), ("best", 0.15, "tab:orange", "best val")):
            means = [c.stats[which]["mean"] for c in cs]
            errs = [[0 if math.isnan(c.stats[which]["ci_lo"]) else c.stats[which]["mean"] - c.stats[which]["ci_lo"] for c in cs],
                    [0 if math.isnan(c.stats[which]["ci_hi"]) else c.stats[which]["ci_hi"] - c.stats[which]["mean"] for c in cs]]
            ax.errorbar(means, [y + dy for y in ys], xerr=errs, fmt="o", color=color, capsize=3, label=label)
        paper = [(c.paper, y) for c, y in zip(cs, ys) if c.paper is not None]
        if paper:
            ax.scatter([p for p, _ in paper], [y for _, y in paper], marker="D", color="black", zorder=3, label="paper")
        ax.set_yticks(list(ys), [c.row for c in cs])
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy %")
        ax.set_title(f"{'Table ' if table.isdigit() else ''}{table}: {column}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    import textwrap

    fig.suptitle(textwrap.fill(title, width=int(60 * n)), fontsize=9)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


# ----------------------------------------------------------------------------- Slurm


def emit_slurm(ws: Path, sweep: Sweep, path: Path | None = None, keep: str = "all", baseline: str | None = None) -> Path:
    """A Slurm job-array script: task k runs run k of this plan (``mmvid sweep ... --task k``) on one GPU,
    every task on the same (shared) workspace; the collecting step then writes the table."""
    from mmvid.workspace import writable_dir

    out = writable_dir(ws / "sweeps" / sweep.name, "sweep folder")
    path = path or out / "sweep.sbatch"
    writable_dir(out / "logs", "sweep log folder")
    # The mmvid of this environment, so that the nodes (which see the same file system) run the same version.
    program = Path(sys.executable).parent / "mmvid"
    program = str(program) if program.exists() else "mmvid"
    base = shlex.join([program, "sweep", *sweep.targets]) + " " + " ".join(
        shlex.join(o.split(" ", 1)) for o in sweep.options) + f" --workspace {shlex.quote(str(ws))}"
    collect_opts = f" --baseline {shlex.quote(baseline)}" if baseline else ""
    text = f"""#!/bin/bash
# mmvid sweep {sweep.name}: {len(sweep.unique)} runs, one array task each (task k = run k of the plan).
# Every node must see the workspace {ws}, the recipes and this Python environment.
#   jobid=$(sbatch --parsable {shlex.quote(str(path))})
#   sbatch --dependency=afterany:$jobid --wrap "cd {shlex.quote(str(Path.cwd()))} && {base} --collect{collect_opts}"
# A task that stops (time limit, preemption) resumes its run when it is submitted again.
#SBATCH --job-name=mmvid-{sweep.name[:40]}
#SBATCH --array=0-{len(sweep.unique) - 1}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --output={out / 'logs'}/slurm-%A_%a.log
set -euo pipefail
cd {shlex.quote(str(Path.cwd()))}
{base} --task "$SLURM_ARRAY_TASK_ID" --jobs 1{'' if keep == 'all' else f' --keep {keep}'}
"""
    path.write_text(text)
    return path


def write_plan(out: Path, sweep: Sweep) -> Path:
    """sweep.json: what each run is (recipe, seed, cell), so a table can be traced back to its runs."""
    plan = {"name": sweep.name, "targets": sweep.targets, "options": sweep.options,
            "runs": [{"index": i, "name": r.name, "recipe": str(r.recipe), "seed": r.seed}
                     for i, r in enumerate(sweep.unique)],
            "cells": [{"table": r.table, "row": r.row, "column": r.column, "seed": r.seed, "run": r.name,
                       "recipe": str(r.recipe), "paper": r.paper} for r in sweep.runs]}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sweep.json", json.dumps(plan, indent=2))
    return out / "sweep.json"


# ----------------------------------------------------------------------------- the command


def sweep_command(console, ws: Path, targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
                  dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None,
                  jobs: int = 1, gpus: int = 0, dry_run: bool = False, emit: str | None = None,
                  task: int | None = None, collect: bool = False, progress: bool = True, keep: str = "all",
                  baseline: str | None = None) -> list[Path]:
    """Plan, then one of: print the commands (``dry_run``), write a Slurm script (``emit``), run one task
    (``task``, for a job array), or run what is not done; then aggregate and write the tables (unless a
    single task ran). Returns the files written."""
    if emit not in (None, "slurm"):
        raise MmvidError(f"--emit {emit!r} is not supported; choose: slurm")
    sweep = plan_sweep(targets, seeds=seeds, quick=quick, epochs=epochs, dataset=dataset, sets=sets, only=only)
    out = ws / "sweeps" / sweep.name
    n_rows, n_runs = len({r.row_id for r in sweep.runs}), len(sweep.unique)
    shared = f", {len(sweep.runs) - n_runs} cells reuse a run of the same config" if n_runs < len(sweep.runs) else ""
    if emit:
        if keep not in KEEP:
            raise MmvidError(f"--keep {keep!r} is not valid; choose one of: {', '.join(KEEP)}")
        script = emit_slurm(ws, sweep, keep=keep, baseline=baseline)
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
    over = ", ".join(sweep.options)
    files = write_tables(cells, out, f"mmvid sweep {' '.join(targets)} ({over})", note, baseline)
    _print_summary(console, cells)
    for p in files:
        console.print(f"wrote {p}", soft_wrap=True, highlight=False)
    if failed:
        raise MmvidError(f"{len(failed)} runs failed ({', '.join(failed[:4])}{', ...' if len(failed) > 4 else ''}); "
                         f"their logs are in {out / 'logs'}; the table has the other runs")
    if missing:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
    return files


def _print_summary(console, cells: list[Cell]) -> None:
    from rich.table import Table

    for name in dict.fromkeys(c.table for c in cells):
        table = Table(title=f"{'Table ' if name.isdigit() else ''}{name}: test accuracy %, mean ± std [95 % CI] over seeds")
        for col in ("row", "column", "seeds", "last epoch", "best-val epoch", "paper (Δ last)"):
            table.add_column(col)
        for c in (c for c in cells if c.table == name):
            paper = "" if c.paper is None else f"{c.paper:.2f}" + (f" ({c.stats['last']['mean'] - c.paper:+.2f})" if c.last else "")
            table.add_row(c.row, c.column, str(len(c.last)), _fmt(c.stats["last"]), _fmt(c.stats["best"]), paper)
        console.print(table)
