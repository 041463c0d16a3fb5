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
    # runs --protocol asked for that cannot be trained under it (a method that needs a validation split under
    # protocol reference): "recipe id under reference: why", for the table's note
    skipped: list[str] = field(default_factory=list)

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


def parse_protocols(protocol: str | None) -> list[str] | None:
    """``--protocol``: None (each recipe's own), ``clean``, ``reference``, ``clean,reference`` or ``both``."""
    from mmvid.config import PROTOCOLS

    if protocol is None:
        return None
    names = list(PROTOCOLS) if protocol.strip() == "both" else [p.strip() for p in protocol.split(",") if p.strip()]
    if not names or any(p not in PROTOCOLS for p in names):
        raise MmvidError(f"--protocol {protocol!r} is not valid; choose {', '.join(PROTOCOLS)}, "
                         f"{','.join(PROTOCOLS)} or both")
    return [p for p in PROTOCOLS if p in names]  # clean first: the table's column order


def plan_sweep(targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
               dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None,
               protocol: str | None = None) -> Sweep:
    """Every recipe under ``targets`` at seeds 0..seeds-1, each config resolved and checked now.

    ``quick`` trains ``epochs`` (default 2) epochs per run and keeps every row; ``dataset`` and ``sets``
    override every run's config; ``only``: comma-separated patterns of recipe ids (``*mm*``).
    Runs whose config differs from the plain recipes get a name with a hash of the overrides.
    ``protocol`` (:func:`parse_protocols`): each recipe x seed runs under each protocol named (default: the
    recipe's own); a run under protocol reference has ``-reference`` in its name, a clean run the name it
    always had, so that runs trained before are reused. A run a protocol cannot train (a method with a
    validation split of its own, under reference) is left out and listed in ``Sweep.skipped``.
    """
    from mmvid.schema import check_name, check_option

    check_option("--seeds", seeds, ge=1, le=1000)
    protocols = parse_protocols(protocol)
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
    sweep_skipped: list[str] = []
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
        for proto in protocols or [None]:
            over_p = {**overrides, **({"protocol": proto} if proto else {})}
            # a bad recipe or --set fails before anything runs
            try:  # a bad recipe, --set or plug-in setting fails before anything runs, naming the recipe
                cfgs = [resolve_config(recipe.config, {**over_p, "seed": seed}, sources) for seed in range(seeds)]
            except MmvidError as e:
                raise MmvidError(f"recipe {f}: {e}") from None
            if proto == "reference":
                from mmvid.workflows import reference_refusal

                why = reference_refusal(cfgs[0])
                if why:
                    sweep_skipped.append(f"{rid} has no protocol reference run: {why}")
                    continue
            for seed, cfg in enumerate(cfgs):
                key = json.dumps({**cfg.to_dict(), "run_name": None}, sort_keys=True, default=str)
                mark = "-reference" if cfg.protocol == "reference" else ""
                name = by_config.setdefault(key, f"sweep-{rid}{tag}{mark}-s{seed}")
                cfg.run_name = check_name("the run name of a sweep", name)
                runs.append(RunSpec(name=name, row_id=rid, recipe=f, seed=seed,
                                    table=str(paper.get("table", target)),
                                    row=paper.get("row", short),
                                    column=paper.get("column", cfg.data.dataset or f.parent.name),
                                    paper=float(paper["accuracy"]) if "accuracy" in paper else None,
                                    overrides={**over_p, "seed": seed}, config=cfg))
    if not runs and sweep_skipped:
        raise MmvidError(f"nothing to train: {'; '.join(sweep_skipped[:3])}")
    if not runs:
        raise MmvidError(f"--only {only!r} matches no recipe under {', '.join(targets)}")
    base = _plain("_".join(_target_name(t) for t in targets), "sweep")
    options = [f"--seeds {seeds}"] + (["--quick"] if quick else []) + ([f"--epochs {epochs}"] if epochs else [])
    options += [f"--dataset {dataset}"] if dataset else []
    options += [f"--set {k}={v}" for k, v in (sets or {}).items()] + ([f"--only {only}"] if only else [])
    options += [f"--protocol {','.join(protocols)}"] if protocols else []
    mark = f"-{'_'.join(protocols)}" if protocols else ""
    # The folder sweeps/<name>: a plain name, as every name that becomes a path (mmvid.schema)
    return Sweep(name=check_name("the sweep's name", f"{base}{tag}{mark}"), targets=list(targets), runs=runs,
                 options=options, skipped=sweep_skipped)


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
    ``hint`` ends the error of a folder trained with another config. Every small file of the folder is
    read first (mmvid.runfiles.check_run): a damaged one is one line naming it."""
    from mmvid.runfiles import check_run, read_config_mapping, read_summary

    if not (run / "config.yaml").exists():
        return "new"
    check_run(run)
    diff = config_difference(read_config_mapping(run), cfg)
    if diff:
        raise MmvidError(f"run {run} was trained with another config ({diff}); remove that folder to retrain it{hint}")
    summary = read_summary(run)
    return "done" if summary is not None and summary["epochs"] == cfg.epochs else "partial"


def train_command(ws: Path, spec: RunSpec, state: str, program: list[str] | None = None) -> list[str]:
    """The ``mmvid train`` command of a run: a fresh start with the recipe and overrides, or ``--resume``."""
    from mmvid.plugins import loaded

    cmd = (program or ["mmvid"]) + ["train", "--workspace", str(ws)]
    for plugin in loaded():  # the user's plug-ins (--plugin, a recipe's plugins:), given again to every run
        cmd += ["--plugin", plugin]
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
    from mmvid.plugins import check_reachable
    from mmvid.workflows import check_plugins, plugin_entries
    from mmvid.workspace import resolve_cache

    for name in dict.fromkeys(r.config.data.dataset for r in todo):  # a missing cache fails now, not once per run
        resolve_cache(ws, name)
    for r in todo:  # and so does a recipe whose plug-ins refuse it (a B-MM option under another augmentation)
        try:
            check_plugins(r.config)
            check_reachable(plugin_entries(r.config), "the runs of a sweep (each a process of its own)")
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
    # Its runs take Ctrl-C as a request to save and stop (mmvid.engine.progress.StopRequest installs a handler even
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
                    # progress only: lines written so far (the run's files are read, checked, by run_state)
                    done_epochs = metrics.read_bytes().count(b"\n") if metrics.exists() else 0
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
    """One table cell: the seeds of a recipe under one protocol, summarised."""

    table: str
    row: str
    column: str
    recipe: str
    seeds: list[int]
    last: list[float]  # test accuracy % at the last epoch, per seed
    best: list[float]  # test accuracy % at the best epoch (best-validation; best-test under reference), per seed
    paper: float | None
    name: str = ""  # the recipe's own name (its file name without the order prefix), for --baseline
    protocol: str = "clean"  # the runs' protocol (mmvid.config.PROTOCOLS)
    # what each seed's best epoch was chosen on (summary.json): "val", or "test" (protocol reference, or a
    # clean run without a validation split)
    selected_on: list[str] = field(default_factory=list)
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
    from mmvid.runfiles import read_summary
    from mmvid.workspace import runs_dir

    from mmvid.engine.evaluation import best_selected_on

    cells: dict[tuple[str, str], Cell] = {}
    missing: list[str] = []
    for r in sweep.runs:
        protocol = r.config.protocol
        cell = cells.setdefault((r.row_id, protocol), Cell(r.table, r.row, r.column, str(r.recipe), [], [], [], r.paper,
                                                           re.sub(r"^\d+-", "", r.recipe.stem), protocol))
        if run_state(ws, r) != "done":
            missing += [r.name] if r.name not in missing else []
            continue
        s = read_summary(runs_dir(ws) / r.name)
        accs = [s[k].get("test_acc") for k in ("last", "best")]
        if None in accs:
            raise MmvidError(f"{runs_dir(ws) / r.name / 'summary.json'} has no test accuracy of its "
                             f"{'last' if accs[0] is None else 'best'} epoch (a cache without a test split?); "
                             f"the table compares test accuracies")
        cell.seeds.append(r.seed)
        cell.last.append(100.0 * float(accs[0]))
        cell.best.append(100.0 * float(accs[1]))
        cell.selected_on.append(best_selected_on(s))
    for cell in cells.values():
        cell.stats = {"last": summarize(cell.last), "best": summarize(cell.best)}
    if baseline:
        bases = {(c.table, c.column, c.protocol): c for c in cells.values() if baseline in (c.name, c.row)}
        if not bases:
            raise MmvidError(f"--baseline {baseline!r} is no row of this sweep; choose a recipe name or row label: "
                             + ", ".join(dict.fromkeys(c.name for c in cells.values())))
        for cell in cells.values():
            base = bases.get((cell.table, cell.column, cell.protocol))
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


def best_label(cells: list[Cell], protocol: str, short: bool = False) -> str:
    """What the best epoch of ``cells`` (one protocol) was chosen on: ``best-validation epoch``, ``best-test
    epoch (selected on test, as the reference code does)``, ...; ``short``: ``best-val``, ``best-test
    (selected on test)``. Read from the runs' summaries; cells of a protocol that chose both ways mark the
    test-selected ones with † (:func:`_dagger`)."""
    from mmvid.config import SELECTED_ON_TEST

    ons = {o for c in cells for o in c.selected_on} or {"test" if protocol == "reference" else "val"}
    why = SELECTED_ON_TEST.get(protocol, SELECTED_ON_TEST["clean"])
    if ons == {"val"}:
        return "best-val" if short else "best-validation epoch"
    if ons == {"test"}:
        return f"best-test ({'selected on test' if protocol == 'reference' else why})" if short else f"best-test epoch ({why})"
    return "best (val; † test)" if short else f"best epoch (validation; † test: {why})"


def _dagger(cell: Cell, group: list[Cell]) -> str:
    """`` †`` on a cell whose best epoch was chosen on test in a ``group`` (one protocol's cells) that chose
    both ways (a clean recipe with data.val_fraction 0 beside others)."""
    ons = {o for c in group for o in c.selected_on}
    return " †" if len(ons) > 1 and "test" in cell.selected_on else ""


def protocol_column(cells: list[Cell], protocol: str) -> str:
    """The label of a protocol's figures beside the paper's, e.g. ``reference: last / best-test (selected on test)``."""
    return f"{protocol}: last / {best_label(cells, protocol, short=True)}"


def headline(cells_of_row: dict[str, Cell]) -> tuple[Cell | None, str]:
    """The figure a row's Δ against the paper is computed from: the reference protocol's best-test figure
    where the sweep ran it (what the paper reports: its reference code selects on test), else the clean
    protocol's best epoch. Returns the cell and its protocol (None when no seed finished)."""
    for protocol in ("reference", "clean"):
        c = cells_of_row.get(protocol)
        if c is not None and c.best:
            return c, protocol
    return None, ""


def write_tables(cells: list[Cell], out: Path, title: str, note: str = "", baseline: str | None = None) -> list[Path]:
    """table.md (per paper table: its rows beside the paper's figure, one column per protocol; then the
    paper's layout, a grid per protocol and epoch: last, then best), table.csv (one line per cell and
    protocol with every number) and table.png / .svg."""
    from mmvid.config import PROTOCOLS

    tables: dict[str, list[Cell]] = {}
    for c in cells:
        tables.setdefault(c.table, []).append(c)
    protocols = [p for p in PROTOCOLS if any(c.protocol == p for c in cells)]
    md = [f"# {title}", ""] + ([note, ""] if note else [])
    md += ["Each cell: test accuracy %, mean ± std over seeds [95 % confidence interval, Student's t]; "
           "the paper's figure and the difference (Δ = ours − paper).", "",
           "Protocols: **clean** holds a validation split out of the training clips and reports the last epoch and "
           "the best-validation epoch; **reference** trains on every training clip and reports the last epoch and "
           "the best-test epoch, selected on test as the paper's reference code does (OGM-GE, Data Remixing), which "
           "flatters it. The paper's figures were selected that way, so the Δ beside each row is computed against "
           "the reference protocol's best-test figure where the sweep ran it (`--protocol both`), else against the "
           "clean protocol's best-validation figure, which is expected to be lower for the same method.", ""]
    for table, cs in tables.items():
        name = f"{'Table ' if table.isdigit() else ''}{table}"
        rows = list(dict.fromkeys(c.row for c in cs))
        columns = list(dict.fromkeys(c.column for c in cs))
        by = {(c.row, c.column, c.protocol): c for c in cs}
        here = [p for p in protocols if any(c.protocol == p for c in cs)]
        labels = [protocol_column([c for c in cs if c.protocol == p], p) for p in here]
        md += [f"## {name}: beside the paper", "",
               "| " + " | ".join(["", "column", "paper", *labels, "Δ vs paper (from)"]) + " |",
               "|" + "---|" * (4 + len(here))]
        for row in rows:
            for col in columns:
                mine = {p: by[row, col, p] for p in here if (row, col, p) in by}
                if not mine:
                    continue
                paper = next(iter(mine.values())).paper
                figures = [" / ".join(_short(mine[p].stats[w]) for w in ("last", "best"))
                           + _dagger(mine[p], [c for c in cs if c.protocol == p]) if p in mine else "" for p in here]
                head, src = headline(mine)
                delta = ("" if paper is None or head is None else
                         f"{head.stats['best']['mean'] - paper:+.2f}{_inside(head.stats['best'], paper)} "
                         f"({src} {'best-test' if 'test' in head.selected_on else 'best-val'})")
                md.append("| " + " | ".join([row, col, "" if paper is None else f"{paper:.2f}", *figures, delta]) + " |")
        md.append("")
        for protocol in here:
            mine = [c for c in cs if c.protocol == protocol]
            for which, label in (("last", "last epoch"), ("best", best_label(mine, protocol))):
                md += [f"## {name}: {label} (protocol {protocol})", "",
                       "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
                for row in rows:
                    c_ = [by.get((row, col, protocol)) for col in columns]
                    cells_ = ["" if c is None else _fmt(c.stats[which]) + (_dagger(c, mine) if which == "best" else "")
                              + _paper(c, which) for c in c_]
                    md.append("| " + " | ".join([row, *cells_]) + " |")
                md.append("")
            if baseline:
                md += [f"## {name}: difference to {baseline}, paired by seed (protocol {protocol})", "",
                       "Each cell: mean difference (test accuracy points) [95 % CI, Student's t over the per-seed "
                       f"differences], last epoch; then {best_label(mine, protocol)}. **Bold**: the interval "
                       "excludes 0.", "",
                       "| " + " | ".join(["", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
                for row in rows:
                    c_ = [by.get((row, col, protocol)) for col in columns]
                    cells_ = [" / ".join(_versus(c.versus[w]) for w in ("last", "best")) if c is not None and c.versus
                              else "" for c in c_]
                    md.append("| " + " | ".join([row, *cells_]) + " |")
                md.append("")
    seeds_n = {len(c.last) for c in cells}
    md.append(f"Seeds per cell: {', '.join(str(n) for n in sorted(seeds_n))}.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n".join(md) + "\n")
    with (out / "table.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["table", "row", "column", "protocol", "best_selected_on", "recipe", "n_seeds", "seeds",
                    *[f"{which}_{k}" for which in ("last", "best") for k in ("mean", "std", "ci95_lo", "ci95_hi")],
                    "paper", "diff_last", "diff_best", "last_per_seed", "best_per_seed",
                    *[f"vs_baseline_{which}_{k}" for which in ("last", "best") for k in ("mean", "ci95_lo", "ci95_hi")]])
        for c in cells:
            sl, sb = c.stats["last"], c.stats["best"]
            w.writerow([c.table, c.row, c.column, c.protocol, " ".join(dict.fromkeys(c.selected_on)), c.recipe,
                        len(c.last), " ".join(map(str, c.seeds)),
                        *[_num(st[k]) for st in (sl, sb) for k in ("mean", "std", "ci_lo", "ci_hi")],
                        "" if c.paper is None else c.paper,
                        "" if c.paper is None or not c.last else _num(sl["mean"] - c.paper),
                        "" if c.paper is None or not c.best else _num(sb["mean"] - c.paper),
                        " ".join(f"{v:.4f}" for v in c.last), " ".join(f"{v:.4f}" for v in c.best),
                        *[_num(c.versus[which][k]) if which in c.versus else "" for which in ("last", "best")
                          for k in ("mean", "ci_lo", "ci_hi")]])
    return [out / "table.md", out / "table.csv", *plot_table(cells, out / "table", title)]


def _short(st: dict[str, float]) -> str:
    if not st["n"]:
        return "–"
    return f"{st['mean']:.2f}" + ("" if st["n"] < 2 else f" ± {st['std']:.2f}")


def _inside(st: dict[str, float], paper: float) -> str:
    if math.isnan(st["ci_lo"]):
        return ""
    return ", in CI" if st["ci_lo"] <= paper <= st["ci_hi"] else ", outside CI"


def _versus(st: dict[str, float]) -> str:
    if st["n"] < 2:
        return f"{st['mean']:+.2f} ({st['n']} seed)"
    text = f"{st['mean']:+.2f} [{st['ci_lo']:+.2f}, {st['ci_hi']:+.2f}]"
    return f"**{text}**" if st["ci_lo"] > 0 or st["ci_hi"] < 0 else text


def _num(x: float) -> str:
    return "" if isinstance(x, float) and math.isnan(x) else f"{x:.4f}"


def plot_table(cells: list[Cell], out: Path, title: str) -> list[Path]:
    """One panel per column (data set or ablation value): each row's mean with its 95 % interval, last
    epoch and best epoch of each protocol (clean: best-validation; reference: best-test, selected on test),
    each labelled with its protocol, and the paper's figure as a diamond."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmvid.config import PROTOCOLS

    groups: dict[tuple[str, str], list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.table, c.column), []).append(c)
    protocols = [p for p in PROTOCOLS if any(c.protocol == p for c in cells)]
    series = [(p, which) for p in protocols for which in ("last", "best")]
    colors = {("clean", "last"): "tab:blue", ("clean", "best"): "tab:orange",
              ("reference", "last"): "tab:green", ("reference", "best"): "tab:red"}
    labels = {(p, w): f"{p}: " + ("last epoch" if w == "last" else best_label([c for c in cells if c.protocol == p], p, short=True))
              for p, w in series}
    step = 0.6 / len(series)
    n = len(groups)
    legend_cols = max(1, min(len(series) + 1, int(4.2 * n // 2.8)))  # a label is up to ~2.7 in wide at 8 pt
    legend_rows = math.ceil((len(series) + 1) / legend_cols)  # below the panels, where it hides no point
    height = (max(len({c.row for c in cs}) for cs in groups.values()) * 0.45 * (1 + 0.5 * (len(protocols) - 1))
              + 1.6 + 0.25 * legend_rows)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, height), squeeze=False, sharey=False)
    for ax, ((table, column), cs) in zip(axes[0], groups.items()):
        rows = list(dict.fromkeys(c.row for c in cs))
        ys = {row: y for y, row in enumerate(rows)}
        for k, (protocol, which) in enumerate(series):
            mine = [c for c in cs if c.protocol == protocol and c.stats[which]["n"]]
            if not mine:
                continue
            dy = -0.3 + step * (k + 0.5)
            means = [c.stats[which]["mean"] for c in mine]
            errs = [[0 if math.isnan(c.stats[which]["ci_lo"]) else c.stats[which]["mean"] - c.stats[which]["ci_lo"] for c in mine],
                    [0 if math.isnan(c.stats[which]["ci_hi"]) else c.stats[which]["ci_hi"] - c.stats[which]["mean"] for c in mine]]
            ax.errorbar(means, [ys[c.row] + dy for c in mine], xerr=errs, fmt="o" if protocol == "clean" else "s",
                        color=colors.get((protocol, which)), capsize=3, label=labels[protocol, which])
        paper = {c.row: c.paper for c in cs if c.paper is not None}
        if paper:
            ax.scatter(list(paper.values()), [ys[r] for r in paper], marker="D", color="black", zorder=3, label="paper")
        ax.set_yticks(list(ys.values()), rows)
        ax.invert_yaxis()
        ax.set_xlabel("test accuracy %")
        ax.set_title(f"{'Table ' if table.isdigit() else ''}{table}: {column}", fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:  # a panel without some series has the others' handles
        for h, lbl in zip(*ax.get_legend_handles_labels()):
            if lbl not in names:
                handles.append(h)
                names.append(lbl)
    fig.legend(handles, names, loc="lower center", ncol=legend_cols, fontsize=8, frameon=False)
    import textwrap

    fig.suptitle(textwrap.fill(title, width=int(60 * n)), fontsize=9)
    fig.tight_layout(rect=(0, 0.25 * legend_rows / height, 1, 1))
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
            "cells": [{"table": r.table, "row": r.row, "column": r.column, "protocol": r.config.protocol,
                       "seed": r.seed, "run": r.name, "recipe": str(r.recipe), "paper": r.paper} for r in sweep.runs],
            "skipped": sweep.skipped}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sweep.json", json.dumps(plan, indent=2))
    return out / "sweep.json"


# ----------------------------------------------------------------------------- the command


def sweep_command(console, ws: Path, targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
                  dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None,
                  jobs: int = 1, gpus: int = 0, dry_run: bool = False, emit: str | None = None,
                  task: int | None = None, collect: bool = False, progress: bool = True, keep: str = "all",
                  baseline: str | None = None, protocol: str | None = None) -> list[Path]:
    """Plan, then one of: print the commands (``dry_run``), write a Slurm script (``emit``), run one task
    (``task``, for a job array), or run what is not done; then aggregate and write the tables (unless a
    single task ran). ``protocol``: see :func:`plan_sweep`. Returns the files written."""
    if emit not in (None, "slurm"):
        raise MmvidError(f"--emit {emit!r} is not supported; choose: slurm")
    sweep = plan_sweep(targets, seeds=seeds, quick=quick, epochs=epochs, dataset=dataset, sets=sets, only=only,
                       protocol=protocol)
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
    if sweep.skipped:  # in the table's note too: a reference column without these rows is not an oversight
        note = " ".join([note, *[f"{line}." for line in sweep.skipped]]).strip()
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
        for col in ("row", "column", "protocol", "seeds", "last epoch", "best epoch", "chosen on", "paper (Δ best)"):
            table.add_column(col)
        for c in (c for c in cells if c.table == name):
            paper = "" if c.paper is None else f"{c.paper:.2f}" + (f" ({c.stats['best']['mean'] - c.paper:+.2f})" if c.best else "")
            table.add_row(c.row, c.column, c.protocol, str(len(c.last)), _fmt(c.stats["last"]), _fmt(c.stats["best"]),
                          "/".join(dict.fromkeys(c.selected_on)), paper)
        console.print(table)
