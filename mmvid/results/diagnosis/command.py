"""``mmvid diagnose``: what modality imbalance looks like on a user's own data, measured, with the methods that
target each pattern (mmvid.results.diagnosis.diagnose). ``RUN`` diagnoses a trained run; ``--dataset NAME``
first trains (or reuses) a fused run of a recipe within ``--epochs`` or ``--minutes``; ``--try`` then compares
the named methods with the plain fused model through ``mmvid sweep``."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from mmvid.config import RECIPES, resolve_config
from mmvid.data.cache import read_info
from mmvid.data.cache_lookup import resolve_cache
from mmvid.engine.checkpoints import check_checkpoint_choice
from mmvid.engine.checks import check_plugins
from mmvid.errors import MmvidError
from mmvid.results.diagnosis.diagnose import Diagnosis, diagnose_run
from mmvid.results.diagnosis.runs import alone_config, config_hash, ensure_run, epochs_for_budget
from mmvid.results.evaluation import load_run, resolve_target
from mmvid.runfiles import read_config
from mmvid.schema import check_option
from mmvid.sweeps.command import sweep_command
from mmvid.workspace import check_out_folder, check_run_folder, run_path, write_atomic


def run_diagnose(console, ws: Path, run: str | None = None, dataset: str | None = None, recipe: str | None = None,
                 sets: dict[str, Any] | None = None, epochs: int | None = None, minutes: float | None = None,
                 alone: bool = True, try_methods: str | None = None, seeds: int = 3, checkpoint: str = "last",
                 device: str = "auto", out: Path | None = None, cache: str | Path | None = None) -> Diagnosis:
    """``mmvid diagnose RUN`` or ``mmvid diagnose --dataset NAME``: the latter trains (or reuses) a fused
    run of ``recipe`` (default: the recipe named like the cache, e.g. ``demo``, else the defaults) for
    ``epochs`` or as many as fit in ``minutes``; then the diagnosis, then the ``try_methods`` comparison."""
    check_checkpoint_choice(checkpoint)
    if (run is None) == (dataset is None):
        raise MmvidError("give a RUN to diagnose or --dataset NAME to train one (not both)")
    if dataset is not None and cache is not None:
        raise MmvidError("--cache reads a RUN's clips from another cache; with --dataset, name the cache there")
    methods = _try_methods(try_methods)
    if out is not None:  # a folder the user named: new, empty or an earlier diagnosis, checked before any work
        check_out_folder(out, "diagnosis.json", ("run", "shapley"))
    if minutes is not None:
        check_option("--minutes", minutes, float, gt=0.0, le=1e6)
    budget = None
    if dataset is not None:
        run_dir, cfg, budget = _fused_run(console, ws, dataset, recipe, sets or {}, epochs, minutes, alone)
    else:
        if recipe or sets or epochs or minutes:
            raise MmvidError("--recipe, --set, --epochs and --minutes choose the run that --dataset trains; "
                             "a RUN given is diagnosed as it was trained")
        run_dir = resolve_target(ws, run)
        cfg = None
    diag = diagnose_run(run_dir, console, out=out, checkpoint=checkpoint, alone=alone, device=device, budget=budget,
                        cache=cache)
    if methods:
        cfg = cfg or load_run(run_dir, "test", device, cache, checkpoint=checkpoint).cfg
        diag.data["try"] = try_comparison(console, ws, cfg, methods, seeds, diag.out / f"try-{config_hash(cfg)}")
        write_atomic(diag.out / "diagnosis.json", json.dumps(diag.data, indent=2, default=float))
    console.print(f"wrote {diag.out / 'diagnosis.json'} and {diag.out / 'diagnosis.html'}", soft_wrap=True, highlight=False)
    return diag


def _try_methods(text: str | None) -> list[str]:
    if not text:
        return []
    have = sorted(p.stem for p in (RECIPES / "methods").glob("*.yaml"))
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in have]
    if bad:
        raise MmvidError(f"--try {', '.join(bad)}: no such method recipe; choose from {', '.join(have)}")
    return names


def _fused_run(console, ws: Path, dataset: str, recipe: str | None, sets: dict[str, Any], epochs: int | None,
               minutes: float | None, alone: bool):
    cache = resolve_cache(ws, dataset)
    if recipe is None and (RECIPES / f"{cache.stem}.yaml").exists():
        recipe = cache.stem
    over = {**sets, "data.dataset": cache.stem}
    if epochs is not None:
        over["epochs"] = epochs
    cfg = resolve_config(recipe, over)
    check_plugins(cfg)
    cfg.run_name = None
    if len(cfg.data.modalities) < 2:
        raise MmvidError(f"diagnose compares modalities; the config has only {cfg.data.modalities}")
    info = read_info(cache)
    wanted = cfg.epochs
    cfg.epochs = 1  # the run's name does not depend on how many epochs the budget allows
    run_dir = run_path(ws, f"diagnose-{cache.stem}-{config_hash(cfg)}", "the run name of diagnose")
    check_run_folder(run_dir, "move that folder (diagnose trains its run there)")
    cfg.epochs = wanted
    budget = None
    if (run_dir / "config.yaml").exists() and epochs is None:
        cfg.epochs = read_config(run_dir).epochs
    elif minutes is not None:
        cfg.epochs, budget = epochs_for_budget(cfg, [alone_config(cfg, m) for m in cfg.data.modalities] if alone else [],
                                               info, minutes, console)
    cfg.run_name = run_dir.name
    ensure_run(cfg, cache, run_dir, console, "fused run")
    return run_dir, cfg, budget


def try_comparison(console, ws: Path, cfg, methods: list[str], seeds: int, folder: Path) -> dict[str, Any]:
    """The named methods (recipes/methods/<name>.yaml) and the plain fused model on the diagnosed run's data and
    settings, ``seeds`` seeds each, through ``mmvid sweep`` (reused and resumed like any sweep); ranked by
    last-epoch held-out accuracy, with 95 % CIs and each method's paired difference to the plain model."""
    folder.mkdir(parents=True, exist_ok=True)
    base = cfg.to_dict()
    base["augment"].update({"name": "none", "args": {}})
    base["balance"] = {"name": "none", "args": {}}
    for key in ("run_name", "seed"):
        base.pop(key, None)
    # The base sits beside the folder: every YAML file in the folder is a row of the sweep.
    write_atomic(folder.parent / "try-base.yaml", yaml.safe_dump(base, sort_keys=False))
    write_atomic(folder / "plain.yaml", yaml.safe_dump({"extends": ["../try-base.yaml"], "paper": {"row": "plain"}}))
    for m in methods:
        write_atomic(folder / f"{m}.yaml", yaml.safe_dump({"extends": ["../try-base.yaml", f"methods/{m}"], "paper": {"row": m}}))
    files = sweep_command(console, ws, [str(folder)], seeds=seeds, baseline="plain")
    csv_path = next((p for p in files if p.suffix == ".csv"), None)
    rows = []
    if csv_path is not None:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    return {"methods": ["plain", *methods], "seeds": seeds, "table": rows,
            "files": [str(p) for p in files]}
