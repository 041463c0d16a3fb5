"""The Python API: what each ``mmvid`` command does, as a function to call from a notebook or a script.

The CLI commands are thin wrappers around these functions: the same checks, the same files, the same
results. Keyword arguments take the CLI's option names (``batch_size`` for ``--batch-size``); ``train``,
``sweep`` and ``diagnose`` also take dotted config keys (``**{"augment.args.beta": 0.4}``), as ``--set`` does::

    import mmvid

    mmvid.prepare("demo", workspace="ws")
    run = mmvid.train(recipe="demo", workspace="ws", epochs=1, balance="ogm-ge", **{"balance.args.alpha": 0.5})
    run.summary["last"]["test_acc"], run.metrics[-1]["rho"], run.checkpoints["best"]
    mmvid.evaluate(run)["accuracy"]
    mmvid.robustness(run, drop=["audio"])

Every problem with the input is a :class:`mmvid.MmvidError` whose message is the CLI's one line.
``plugins=[...]`` imports the user's plug-in files or modules first (``--plugin``); a plug-in class defined
in a notebook cell works in this process, and where it cannot (other processes: ``gpus=2``, a sweep's runs)
one line says how to put it in a file. ``console``: a :class:`rich.console.Console` for what the command
prints (default: a new one; ``quiet=True``: nothing).
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from mmvid.errors import MmvidError

__all__ = ["Run", "prepare", "train", "evaluate", "robustness", "visualize", "report", "sweep", "diagnose",
           "TRAIN_OPTIONS", "PREPARE_OPTIONS"]

# ``train``'s options (the CLI's flag names, "-" as "_") and the config key each sets.
TRAIN_OPTIONS: dict[str, str] = {
    "dataset": "data.dataset", "fusion": "model.fusion", "aug": "augment.name", "balance": "balance.name",
    "calibrate": "model.calibrate", "encoder": "model.encoder", "epochs": "epochs", "batch_size": "data.batch_size",
    "lr": "optim.lr", "seed": "seed", "device": "device", "amp": "amp", "gpus": "gpus", "workers": "data.workers",
    "run_name": "run_name", "cache_in_memory": "data.cache_in_memory", "cache_on_gpu": "data.cache_on_gpu",
    "protocol": "protocol", "logger": "logger",
}
# ``prepare``'s cache-parameter options (the CLI's flag names) and the parameter each sets
# (mmvid.data.params.PrepareParams; any other parameter is given by its own name, as --param does).
PREPARE_OPTIONS: dict[str, str] = {
    "frames": "num_frames", "fps": "fps", "image_size": "image_size", "sample_rate": "sample_rate",
    "clip_seconds": "clip_seconds", "flow": "flow", "missing_audio": "missing_audio", "frame_size": "frame_size",
    "frame_select": "frame_select", "audio_feature": "audio_feature",
}


def option_label(name: str, cli: bool) -> str:
    """How an error names an option: ``--batch-size`` on the command line, ``batch_size=`` in Python."""
    return f"--{name.replace('_', '-')}" if cli else f"{name}="


def _unknown(what: str, key: str, valid: Iterable[str], hint: str = "") -> MmvidError:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1)
    return MmvidError(f"{what}: unknown option {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                      + f"; valid: {', '.join(valid)}{hint}")


def train_overrides(options: dict[str, Any], sets: dict[str, Any] | None = None,
                    cli: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """``train``'s keyword arguments -> (config overrides by dotted key, the option that gave each, for errors).
    A dotted key passes as it is; a plain name is one of :data:`TRAIN_OPTIONS` or a top-level config field
    (``val_fraction``); anything else is one line with the closest option. ``sets`` (``--set KEY=VALUE``)
    pass as they are, after the options, and the config check names them."""
    from dataclasses import fields

    from mmvid.config import TrainConfig

    top = {f.name for f in fields(TrainConfig)}
    overrides, sources = {}, {}
    for key, value in options.items():
        if "." in key:
            overrides[key], sources[key] = value, f"{key!r}"
            continue
        if key not in TRAIN_OPTIONS and key not in top:
            raise _unknown("train", key, set(TRAIN_OPTIONS) | {k for k in top if "." not in k},
                           " or a dotted config key, e.g. **{'optim.weight_decay': 1e-4}")
        target = TRAIN_OPTIONS.get(key, key)
        overrides[target] = value
        if value is not None:
            sources[target] = option_label(key, cli)
    for key, value in (sets or {}).items():
        overrides[key], sources[key] = value, f"--set {key}"
    return overrides, sources


def _errors(fn):
    """Every failure of the user's input as :class:`MmvidError` (a place that cannot be written included)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MmvidError:
            raise
        except OSError as e:
            if e.filename is None:
                raise
            from mmvid.workspace import unwritable

            raise unwritable(e) from None

    return wrapper


def _console(console=None, quiet: bool = False):
    from rich.console import Console

    if console is not None:
        return console
    return Console(quiet=quiet)


def _use(plugins: Iterable[str] | str | None) -> None:
    from mmvid.plugins import use

    use([plugins] if isinstance(plugins, (str, Path)) else list(plugins or []))


def _ws(workspace: str | Path | None) -> Path:
    from mmvid.workspace import workspace_dir

    return workspace_dir(workspace)


def _target(run: Run | str | Path | None, workspace: str | Path | None) -> Path:
    """A run (:class:`Run`, name, folder or checkpoint file; None: the latest) -> its folder or checkpoint."""
    from mmvid.results.evaluation import resolve_target

    if isinstance(run, Run):
        return run.path
    return resolve_target(_ws(workspace), run)


# ----------------------------------------------------------------------------- Run


@dataclass(frozen=True)
class Run:
    """A run folder written by :func:`train` (``mmvid train``): its config, metrics, checkpoints and figures,
    read (and checked) when asked for, so a ``Run`` of a run still training shows its progress."""

    path: Path

    @classmethod
    def load(cls, run: str | Path | None = None, workspace: str | Path | None = None) -> Run:
        """A run by name (in ``workspace``'s runs/), by folder, or the latest (``None``)."""
        from mmvid.workspace import resolve_run

        return cls(resolve_run(_ws(workspace), run))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def config(self):
        """The run's :class:`mmvid.config.TrainConfig` (config.yaml, every value checked)."""
        from mmvid.runfiles import read_config

        return read_config(self.path)

    @property
    def metrics(self) -> list[dict[str, Any]]:
        """One dict per finished epoch (metrics.jsonl): accuracies, losses, rho, the plug-ins' coefficients."""
        from mmvid.runfiles import read_metrics

        return read_metrics(self.path, required=False)

    @property
    def summary(self) -> dict[str, Any] | None:
        """summary.json: the last and best epochs' figures (None while it trains)."""
        from mmvid.runfiles import read_summary

        return read_summary(self.path)

    @property
    def checkpoints(self) -> dict[str, Path]:
        """``best`` and ``last`` -> the checkpoint files that exist."""
        from mmvid.workspace import CKPT_BEST, CKPT_LAST

        return {k: self.path / f for k, f in (("best", CKPT_BEST), ("last", CKPT_LAST)) if (self.path / f).exists()}

    @property
    def figures(self) -> list[Path]:
        """The figures drawn of this run (figures/, robustness/), PNG and SVG."""
        return sorted(p for d in ("figures", "robustness") for p in (self.path / d).glob("*")
                      if p.suffix in (".png", ".svg"))

    def evaluate(self, **kwargs) -> dict[str, Any]:
        """:func:`evaluate` of this run."""
        return evaluate(self, **kwargs)

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)


# ----------------------------------------------------------------------------- commands


@_errors
def prepare(dataset: str, *, workspace: str | Path | None = None, root: str | Path | None = None,
            name: str | None = None, workers: int | str = "auto", force: bool = False, info: bool = False,
            split: str | None = None, train_list: str | Path | None = None, test_list: str | Path | None = None,
            seed: int = 0, clips: int | None = None, shard: str | None = None, merge: bool = False,
            preset: str | None = None, plugins: Iterable[str] | None = None, console=None, quiet: bool = False,
            progress: bool = True, _params: dict[str, Any] | None = None, _cli: bool = False, **params) -> Path:
    """Decode ``dataset`` once into the workspace's HDF5 cache (``mmvid prepare``); returns the cache's path.
    ``params``: cache parameters by option name (``frames=8``, ``image_size=112``; :data:`PREPARE_OPTIONS`)
    or by parameter name (``stft_pad="reflect"``, as ``--param``)."""
    from dataclasses import fields

    from mmvid.data.params import PrepareParams
    from mmvid.workflows import run_prepare

    _use(plugins)
    known = {f.name for f in fields(PrepareParams)}
    values, labels = {}, {}
    given = [(k, v, option_label(k, _cli)) for k, v in params.items()]
    given += [(k, v, f"--param {k}") for k, v in (_params or {}).items()]  # the CLI's --param KEY=VALUE
    for key, value, label in given:
        target = PREPARE_OPTIONS.get(key, key)
        if target not in known:
            raise _unknown("prepare", key, set(PREPARE_OPTIONS) | known)
        if value is None:
            continue
        if target in values:
            raise MmvidError(f"prepare: {label} repeats {labels[target]}; give it once")
        values[target], labels[target] = value, label
    return run_prepare(_console(console, quiet), _ws(workspace), dataset, root=Path(root) if root else None, name=name,
                       workers=workers, force=force, info=info, split=split,
                       train_list=Path(train_list) if train_list else None,
                       test_list=Path(test_list) if test_list else None, seed=seed, clips=clips,
                       params=values, labels=labels, shard=shard, merge=merge, preset=preset, progress=progress)


@_errors
def train(recipe: str | Path | dict | None = None, *, workspace: str | Path | None = None, resume: str | None = None,
          plugins: Iterable[str] | None = None, console=None, quiet: bool = False, progress: bool = True,
          _sets: dict[str, Any] | None = None, _cli: bool = False, **overrides) -> Run:
    """Train a model on a prepared cache (``mmvid train``); returns the :class:`Run`.

    ``recipe``: a name in recipes/, a YAML file, or a dict of config sections. ``overrides``: the CLI's options
    (``dataset="demo"``, ``epochs=1``, ``balance="ogm-ge"``, ``gpus=2``; :data:`TRAIN_OPTIONS`) and dotted
    config keys (``**{"augment.args.beta": 0.4}``), applied over the recipe in that order. ``resume``:
    continue an interrupted run (name or folder) instead."""
    from mmvid.workflows import run_train

    _use(plugins)
    values, sources = train_overrides(overrides, _sets, cli=_cli)
    if resume is not None and (recipe is not None or any(v is not None for v in values.values())):
        given = [option_label("recipe", _cli)] if recipe is not None else []
        given += [sources.get(k, k) for k, v in values.items() if v is not None]
        raise MmvidError(f"{option_label('resume', _cli)} continues a run with its own config; leave out "
                         f"{', '.join(given)} (a new run with other settings: leave out {option_label('resume', _cli)})")
    return Run(run_train(_console(console, quiet), _ws(workspace), recipe, values, resume, progress=progress,
                         sources=sources))


@_errors
def evaluate(run: Run | str | Path | None = None, *, workspace: str | Path | None = None, split: str = "test",
             checkpoint: str = "best", device: str = "auto", cache: str | Path | None = None,
             plugins: Iterable[str] | None = None, console=None, quiet: bool = True) -> dict[str, Any]:
    """Metrics of a run on ``split`` (``mmvid evaluate --json``): accuracy, macro-F1, per-class and
    per-modality accuracy, confusion matrices, rho; also written to ``<run>/eval_<split>.json``."""
    from mmvid.engine.checkpoints import check_checkpoint_choice
    from mmvid.results.evaluation import evaluate_run
    from mmvid.runfiles import check_run

    _use(plugins)
    check_checkpoint_choice(checkpoint)  # a bad value fails here, before any run is loaded
    target = _target(run, workspace)
    check_run(target.parent if target.is_file() else target)
    return evaluate_run(target, split, device, cache, checkpoint=checkpoint,
                        console=None if quiet and console is None else _console(console))


def split_list(text: str | Iterable[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; None stays None."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else [v for t in text for v in str(t).split(",")]
    return [v.strip() for v in items if v.strip()] or None


@_errors
def robustness(runs: Run | str | Path | list | None = None, *, workspace: str | Path | None = None,
               drop: str | list[str] | None = None, fill: str = "zero", noise: str | None = None,
               modality: str = "each", levels: str | list[str] | dict[str, list[float]] | None = None,
               corruptions: str | list[str] | None = None, severities: str | list[str] | None = None,
               split: str = "test", out: str | Path | None = None, seed: int = 0, device: str = "auto",
               cache: str | Path | None = None, plugins: Iterable[str] | None = None, console=None,
               quiet: bool = True) -> dict[str, Any]:
    """Accuracy of one or more runs with a modality missing, noisy or corrupted (``mmvid robustness``);
    returns what robustness.json holds (``conditions``, ``runs``) and writes the CSV, JSON and figure."""
    import json

    from mmvid.results.robustness import compare_robustness, default_out_dir, parse_levels
    from mmvid.workspace import check_out_folder

    _use(plugins)
    ws = _ws(workspace)
    if out is not None:  # a folder the user named: new, empty or an earlier robustness output, never other files
        check_out_folder(Path(out), "robustness.json", ("conditions", "runs"))
    items = runs if isinstance(runs, (list, tuple)) else [runs]
    targets = [_target(r, ws) for r in items]
    if not isinstance(levels, dict):
        levels = parse_levels([levels] if isinstance(levels, str) else levels, modality)
    report = compare_robustness(targets, drop=[drop] if isinstance(drop, str) else drop, fill=fill, noise=noise,
                                modality=modality, levels=levels, corruptions=split_list(corruptions),
                                severities=split_list(severities), split=split, device=device,
                                console=None if quiet and console is None else _console(console), seed=seed,
                                out_dir=Path(out) if out else (default_out_dir(targets, ws) if len(targets) > 1 else None),
                                cache=cache)
    result = json.loads((report.out_dir / "robustness.json").read_text())
    result["files"] = [str(p) for p in report.files]
    return result


FIGURES = ("curves", "umap", "confusion")


@_errors
def visualize(kind: str, run: Run | str | Path | None = None, *, workspace: str | Path | None = None,
              split: str = "test", max_points: int = 500, seed: int = 0, out: str | Path | None = None,
              device: str = "auto", cache: str | Path | None = None, plugins: Iterable[str] | None = None,
              console=None, quiet: bool = True) -> list[Path]:
    """Figures of a run as PNG and SVG (``mmvid visualize``): ``curves``, ``umap`` or ``confusion``;
    returns their paths."""
    from mmvid.results import figures as V
    from mmvid.schema import check_option
    from mmvid.workspace import check_out_file, is_mmvid_run

    _use(plugins)
    if kind not in FIGURES:
        raise MmvidError(f"unknown figure {kind!r}; choose one of: {', '.join(FIGURES)}")
    max_points = check_option("max_points", max_points, ge=4)
    out = Path(out) if out is not None else None
    if out is not None:  # files the user named: new, or figures mmvid wrote there before
        for suffix in (".png", ".svg"):
            check_out_file(out.with_suffix(suffix))
    target = _target(run, workspace)
    con = None if quiet and console is None else _console(console)
    if kind == "curves":  # the one figure drawn without loading a checkpoint: from any folder's metrics.jsonl
        folder = target.parent if target.is_file() else target
        if out is None and not is_mmvid_run(folder):  # into its figures/, never over files mmvid did not write
            for suffix in (".png", ".svg"):
                check_out_file(folder / "figures" / f"curves{suffix}", "the figure")
        return V.plot_curves(folder, out)
    if kind == "umap":
        return V.plot_umap(target, max_points=max_points, seed=seed, device=device, cache=cache, out=out, console=con)
    return V.plot_confusion(target, split, device, cache, out, console=con)


@_errors
def report(run: Run | str | Path | None = None, *, workspace: str | Path | None = None, umap: bool = True,
           robustness: bool = True, out: str | Path | None = None, device: str = "auto",
           cache: str | Path | None = None, plugins: Iterable[str] | None = None, console=None,
           quiet: bool = True) -> Path:
    """One self-contained HTML page of a run (``mmvid report``); returns its path."""
    from mmvid.results.report import write_report
    from mmvid.workspace import check_out_file, resolve_run

    _use(plugins)
    if out is not None:  # a file the user named: new, or a report mmvid wrote there before
        check_out_file(Path(out))
    folder = run.path if isinstance(run, Run) else resolve_run(_ws(workspace), run)
    return write_report(folder, out=Path(out) if out else None, umap=umap, robustness=robustness, device=device,
                        console=None if quiet and console is None else _console(console), cache=cache)


@_errors
def sweep(targets: str | Path | list, *, workspace: str | Path | None = None, seeds: int = 3, quick: bool = False,
          epochs: int | None = None, dataset: str | None = None, only: str | None = None, jobs: int = 1,
          gpus: int = 0, dry_run: bool = False, emit: str | None = None, task: int | None = None,
          collect: bool = False, keep: str = "all", baseline: str | None = None, protocol: str | None = None,
          logger: str | Iterable[str] | None = None, plugins: Iterable[str] | None = None, console=None,
          quiet: bool = False, progress: bool = True, slurm: dict[str, Any] | None = None,
          grid: dict[str, list[Any]] | None = None, **sets) -> list[Path]:
    """Train every recipe of ``targets`` (folders or files) at every seed and write the table (``mmvid
    sweep``); ``sets``: dotted config keys for every run (``--set``). Returns the files written (table.md,
    .csv, .png ...). ``logger``: loggers for every run (``--logger``), grouped under the sweep's name. Each run is
    a process of its own: its plug-ins must come from files or modules. ``slurm``: with ``emit="slurm"``, the job
    array's settings (``--slurm``: partition, account, time, mem, cpus, gres, qos, throttle, signal). ``grid``:
    a config key -> its values (``--grid KEY=v1,v2``): every recipe at every point of their product."""
    from mmvid.sweeps.command import sweep_command

    _use(plugins)
    items = [str(t) for t in (targets if isinstance(targets, (list, tuple)) else [targets])]
    return sweep_command(_console(console, quiet), _ws(workspace), items, seeds=seeds, quick=quick, epochs=epochs,
                         dataset=dataset, sets=sets, only=only, jobs=jobs, gpus=gpus, dry_run=dry_run, emit=emit,
                         task=task, collect=collect, progress=progress, keep=keep, baseline=baseline, protocol=protocol,
                         loggers=split_list(logger) or [], slurm=slurm, grid=grid)


@_errors
def diagnose(run: Run | str | Path | None = None, *, workspace: str | Path | None = None, dataset: str | None = None,
             recipe: str | None = None, epochs: int | None = None, minutes: float | None = None, alone: bool = True,
             try_methods: str | list[str] | None = None, seeds: int = 3, checkpoint: str = "last",
             device: str = "auto", out: str | Path | None = None, cache: str | Path | None = None,
             plugins: Iterable[str] | None = None, console=None, quiet: bool = False, **sets) -> dict[str, Any]:
    """Measure a run's modality imbalance (``mmvid diagnose``): Shapley values, linear probes, memorisation,
    the conditional utilisation rate; with ``dataset`` instead of a run, train the short runs needed
    first (``sets``: dotted config keys for them). Returns what diagnosis.json holds."""
    import json

    from mmvid.results.diagnosis.command import run_diagnose

    _use(plugins)
    if isinstance(run, Run):
        run = str(run.path)
    elif run is not None:
        run = str(run)
    tries = ",".join(try_methods) if isinstance(try_methods, (list, tuple)) else try_methods
    result = run_diagnose(_console(console, quiet), _ws(workspace), run=run, dataset=dataset, recipe=recipe, sets=sets,
                          epochs=epochs, minutes=minutes, alone=alone, try_methods=tries, seeds=seeds,
                          checkpoint=checkpoint, device=device, out=Path(out) if out else None, cache=cache)
    return json.loads((result.out / "diagnosis.json").read_text())  # as written: numbers as JSON has them


@_errors
def recipes(name: str | None = None, *, copy: bool = False, to: str | Path | None = None,
            workspace: str | Path | None = None) -> dict[str, str] | str | list[Path]:
    """mmvid's own recipes (``mmvid recipes``), from a checkout or an installed wheel alike. No ``name``, or a
    folder (``table1/cremad``): {recipe name: its first comment line}. A recipe's name (``demo``): its text.
    ``copy``: copy the recipe or folder under ``to`` (default ``<workspace>/recipes``) for editing, keeping its
    relative name; returns the files written (never overwriting a file mmvid did not write)."""
    from mmvid.config import catalog

    if copy:
        if name is None:
            raise MmvidError("recipes copy: name the recipe or folder to copy, e.g. demo or table1/cremad")
        return catalog.copy_recipes(name, Path(to) if to is not None else _ws(workspace) / "recipes")
    if name is not None and catalog.locate(name).is_file():
        return catalog.locate(name).read_text(encoding="utf-8")
    return catalog.listing(name)
