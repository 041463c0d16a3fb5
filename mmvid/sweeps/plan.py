"""A sweep's plan: one :class:`RunSpec` per recipe, seed and protocol, in a fixed order, each with a run name
derived from the recipe's path (``sweep-table1-cremad-concat-mm-s0``), so that running the same command again
finds its runs; and ``sweep.json``, which traces a table back to its runs."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from mmvid.config import PROTOCOLS, RECIPES, Recipe, TrainConfig, read_recipe, resolve_config
from mmvid.engine.checks import reference_refusal
from mmvid.errors import MmvidError
from mmvid.schema import check_name, check_option
from mmvid.workspace import write_atomic

QUICK_EPOCHS = 2


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
    loggers: list[str] = field(default_factory=list)  # ``mmvid sweep --logger``: given to its ``mmvid train``
    group: str | None = None  # track.group of a run with loggers: the sweep's name (a W&B group, a TensorBoard folder)
    # the data set (cache name) of the published figure: the recipe's own data.dataset, before --dataset / --set
    paper_dataset: str | None = None


@dataclass
class Sweep:
    name: str  # output folder under <workspace>/sweeps
    targets: list[str]  # what the user named (for the commands that continue or collect the sweep)
    runs: list[RunSpec]  # one per cell and seed; rows with the same config share a run (Table 2's Concat is Table 1's)
    options: list[str]  # the sweep's own flags that shape its plan (--seeds, --quick, --set ...)
    # runs --protocol asked for that cannot be trained under it (a method that needs a validation split under
    # protocol reference): "recipe id under reference: why", for the table's note
    skipped: list[str] = field(default_factory=list)
    # the recipes' ``slurm:`` section (the job array's resources, mmvid.sweeps.slurm) and the recipe it came from
    slurm: dict[str, Any] | None = None
    slurm_source: str = ""

    @property
    def unique(self) -> list[RunSpec]:
        """The runs to train, each once, in plan order (``--task k`` is the k-th of these)."""
        first: dict[str, RunSpec] = {}
        for r in self.runs:
            first.setdefault(r.name, r)
        return list(first.values())


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
    if protocol is None:
        return None
    names = list(PROTOCOLS) if protocol.strip() == "both" else [p.strip() for p in protocol.split(",") if p.strip()]
    if not names or any(p not in PROTOCOLS for p in names):
        raise MmvidError(f"--protocol {protocol!r} is not valid; choose {', '.join(PROTOCOLS)}, "
                         f"{','.join(PROTOCOLS)} or both")
    return [p for p in PROTOCOLS if p in names]  # clean first: the table's column order


def plan_sweep(targets: list[str], seeds: int = 3, quick: bool = False, epochs: int | None = None,
               dataset: str | None = None, sets: dict[str, Any] | None = None, only: str | None = None,
               protocol: str | None = None, grid: dict[str, list[str]] | None = None) -> Sweep:
    """Every recipe under ``targets`` at seeds 0..seeds-1, each config resolved and checked now.

    ``quick`` trains ``epochs`` (default 2) epochs per run and keeps every row; ``dataset`` and ``sets``
    override every run's config; ``only``: comma-separated patterns of recipe ids (``*mm*``).
    Runs whose config differs from the plain recipes get a name with a hash of the overrides.
    ``protocol`` (:func:`parse_protocols`): each recipe x seed runs under each protocol named (default: the
    recipe's own); a run under protocol reference has ``-reference`` in its name, a clean run the name it
    always had, so that runs trained before are reused. A run a protocol cannot train (a method with a
    validation split of its own, under reference) is left out and listed in ``Sweep.skipped``.
    ``grid`` (``--grid KEY=v1,v2``, :func:`parse_grid`): every recipe runs at every point of the product of the
    keys' values, each point a row of its own named by its values (``Concat + B-MM [augment.beta=0.4]``); every
    point's config is resolved, so checked by the typed settings, here, before any run starts.
    """
    check_option("--seeds", seeds, ge=1, le=1000)
    protocols = parse_protocols(protocol)
    if epochs is not None:
        check_option("--epochs", epochs, ge=1, le=1_000_000)
    overrides: dict[str, Any] = dict(sets or {})
    if dataset is not None:  # "" too: the config's rule refuses an empty cache name
        overrides["data.dataset"] = dataset
    if quick or epochs is not None:
        overrides["epochs"] = epochs or QUICK_EPOCHS
    sources = {**{k: f"--set {k}" for k in sets or {}}, "data.dataset": "--dataset", "epochs": "--epochs",
               **{k: f"--grid {k}" for k in grid or {}}}  # for errors
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] if grid else [{}]
    # (recipe, the table a row falls in without paper.table: the target's name; "." and ".." by their folder's)
    files = [(f, Path(t).resolve().stem or str(t)) for t in targets for f in _recipe_files(t)]
    patterns = [p.strip() for p in (only or "").split(",") if p.strip()]
    def tag_of(over: dict[str, Any]) -> str:
        if not over:
            return ""
        digest = hashlib.sha1(json.dumps(over, sort_keys=True, default=str).encode()).hexdigest()[:6]
        return f"-quick{digest}" if quick else f"-{digest}"

    tag = tag_of({**overrides, **({"grid": grid} if grid else {})})
    runs: list[RunSpec] = []
    sweep_skipped: list[str] = []
    seen: dict[str, Path] = {}
    slurm: tuple[dict[str, Any], str] | None = None
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
        section = recipe.config.pop("slurm", None)  # the job array's, not a run's: kept out of the run's config
        if section is not None:
            if not isinstance(section, dict):
                raise MmvidError(f"recipe {f}: slurm must be a mapping of the job array's settings, e.g. "
                                 f"slurm: {{partition: gpu, time: '4:00:00'}}")
            if slurm is not None and section != slurm[0]:
                raise MmvidError(f"recipes {slurm[1]} and {f} ask for different slurm: sections; give them the "
                                 f"same one, or the job array's settings with --slurm KEY=VALUE")
            slurm = (section, str(f))
        for point in points:
            label = ", ".join(f"{k}={v}" for k, v in point.items())
            for proto in protocols or [None]:
                over_p = {**overrides, **point, **({"protocol": proto} if proto else {})}
                why = _recipe_runs(f, recipe, target, rid, short, seeds, over_p, sources, tag_of({**overrides, **point}),
                                   by_config, runs, label)
                if why:
                    sweep_skipped.append(f"{rid}{f' [{label}]' if label else ''} has no protocol reference run: {why}")
    if not runs and sweep_skipped:
        raise MmvidError(f"nothing to train: {'; '.join(sweep_skipped[:3])}")
    if not runs:
        raise MmvidError(f"--only {only!r} matches no recipe under {', '.join(targets)}")
    base = _plain("_".join(_target_name(t) for t in targets), "sweep")
    mark = f"-{'_'.join(protocols)}" if protocols else ""
    # The folder sweeps/<name>: a plain name, as every name that becomes a path (mmvid.schema)
    return Sweep(name=check_name("the sweep's name", f"{base}{tag}{mark}"), targets=list(targets), runs=runs,
                 options=_sweep_options(seeds, quick, epochs, dataset, sets, only, protocols, grid), skipped=sweep_skipped,
                 slurm=slurm[0] if slurm else None, slurm_source=slurm[1] if slurm else "")


def _recipe_runs(f: Path, recipe: Recipe, target: str, rid: str, short: str, seeds: int, over_p: dict[str, Any],
                 sources: dict[str, str], tag: str, by_config: dict[str, str], runs: list[RunSpec],
                 point: str = "") -> str | None:
    """Append to ``runs`` the runs of ``recipe`` (the file ``f``) at seeds 0..seeds-1 with the overrides ``over_p``
    (one protocol's); a run whose resolved config another cell already trains takes that run's name (``by_config``).
    ``point``: the grid point's name (``augment.beta=0.4, augment.warmup=5``), which names its row.
    Returns why the recipe has no run under protocol reference, or None."""
    paper = recipe.paper or {}
    try:  # a bad recipe, --set or plug-in setting fails before anything runs, naming the recipe
        cfgs = [resolve_config(recipe.config, {**over_p, "seed": seed}, sources) for seed in range(seeds)]
    except MmvidError as e:
        raise MmvidError(f"recipe {f}: {e}") from None
    if over_p.get("protocol") == "reference":
        why = reference_refusal(cfgs[0])
        if why:
            return why
    for seed, cfg in enumerate(cfgs):
        key = json.dumps({**cfg.to_dict(), "run_name": None}, sort_keys=True, default=str)
        mark = "-reference" if cfg.protocol == "reference" else ""
        name = by_config.setdefault(key, f"sweep-{rid}{tag}{mark}-s{seed}")
        cfg.run_name = check_name("the run name of a sweep", name)
        runs.append(RunSpec(name=name, row_id=f"{rid} [{point}]" if point else rid, recipe=f, seed=seed,
                            table=str(paper.get("table", target)),
                            row=paper.get("row", short) + (f" [{point}]" if point else ""),
                            column=paper.get("column", cfg.data.dataset or f.parent.name),
                            paper=float(paper["accuracy"]) if "accuracy" in paper else None,
                            paper_dataset=(recipe.config.get("data") or {}).get("dataset"),
                            overrides={**over_p, "seed": seed}, config=cfg))
    return None


def _sweep_options(seeds: int, quick: bool, epochs: int | None, dataset: str | None, sets: dict[str, Any] | None,
                   only: str | None, protocols: list[str] | None, grid: dict[str, list[str]] | None = None) -> list[str]:
    """The sweep's own flags that shape its plan, as the command line gives them (sweep.json, the Slurm script)."""
    options = [f"--seeds {seeds}"] + (["--quick"] if quick else []) + ([f"--epochs {epochs}"] if epochs else [])
    options += [f"--dataset {dataset}"] if dataset else []
    options += [f"--set {k}={v}" for k, v in (sets or {}).items()] + ([f"--only {only}"] if only else [])
    options += [f"--protocol {','.join(protocols)}"] if protocols else []
    options += [f"--grid {k}={','.join(map(str, vs))}" for k, vs in (grid or {}).items()]
    return options


def parse_grid(items: list[str] | None) -> dict[str, list[str]] | None:
    """``--grid KEY=v1,v2,...`` (repeatable) -> key -> its values, in the order given; a key given twice, or
    without values, is one line. The values are checked when each point's config is resolved (:func:`plan_sweep`)."""
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, _, values = item.partition("=")
        key = key.strip()
        vs = [v.strip() for v in values.split(",")]
        if not key or not _ or not all(vs):
            raise MmvidError(f"--grid {item!r} must look like KEY=v1,v2,..., e.g. --grid augment.args.beta=0.2,0.4")
        if key in grid:
            raise MmvidError(f"--grid {key} is given twice; give its values once: --grid {key}=v1,v2,...")
        if len(set(vs)) < len(vs):
            raise MmvidError(f"--grid {item!r} repeats a value; give each once")
        grid[key] = vs
    return grid or None


def write_plan(out: Path, sweep: Sweep) -> Path:
    """sweep.json: what each run is (recipe, seed, cell), so a table can be traced back to its runs."""
    plan = {"name": sweep.name, "targets": sweep.targets, "options": sweep.options,
            "runs": [{"index": i, "name": r.name, "recipe": str(r.recipe), "seed": r.seed}
                     for i, r in enumerate(sweep.unique)],
            "cells": [{"table": r.table, "row": r.row, "column": r.column, "protocol": r.config.protocol,
                       "seed": r.seed, "run": r.name, "recipe": str(r.recipe), "paper": r.paper,
                       "dataset": r.config.data.dataset, "paper_dataset": r.paper_dataset} for r in sweep.runs],
            "skipped": sweep.skipped}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "sweep.json", json.dumps(plan, indent=2))
    return out / "sweep.json"
