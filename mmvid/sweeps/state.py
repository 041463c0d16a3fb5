"""The state of a sweep's run folder: ``done``, ``partial`` (to resume) or ``new``; a folder trained with another
config is an error naming the key, never silently reused or overwritten."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mmvid.config import ABSENT_MEANS, TrainConfig, canonical_dict
from mmvid.errors import MmvidError
from mmvid.runfiles import check_run, read_config_mapping, read_summary
from mmvid.sweeps.plan import RunSpec
from mmvid.workspace import check_run_folder, run_path

# Settings of how a run executes, not of what it learns: a run is reused whatever they were.
EXECUTION_KEYS = ("run_name", "device", "gpus", "data.workers", "data.cache_in_memory", "data.cache_on_gpu",
                  "logger", "track.args", "track.every", "track.group")


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
    run = run_path(ws, spec.name, "the run name of a sweep")
    check_run_folder(run, "rename the recipe (its runs are named after it) or move that folder")
    return folder_state(run, spec.config, ", or run the sweep with other options")


def folder_state(run: Path, cfg: TrainConfig, hint: str = "") -> str:
    """:func:`run_state` of the run folder ``run`` for ``cfg`` (also used by ``mmvid diagnose``);
    ``hint`` ends the error of a folder trained with another config. Every small file of the folder is
    read first (mmvid.runfiles.check_run): a damaged one is one line naming it."""
    if not (run / "config.yaml").exists():
        return "new"
    check_run(run)
    diff = config_difference(read_config_mapping(run), cfg)
    if diff:
        raise MmvidError(f"run {run} was trained with another config ({diff}); remove that folder to retrain it{hint}")
    summary = read_summary(run)
    return "done" if summary is not None and summary["epochs"] == cfg.epochs else "partial"
