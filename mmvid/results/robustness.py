"""Robustness of trained runs: a missing modality, Gaussian noise at stated levels, and a sweep of
named corruptions, every run meeting the same corrupted test clips.

* ``drop``: the modality's input is replaced by zeros (``zero``) or by its training-set mean
  (``mean``, the per-position mean input over the run's training rows) before the encoders; the
  model is unchanged, so this is the fused model's answer when the sensor is off.
* ``noise gaussian``: SNR in dB for audio (on the linear STFT magnitude, see
  :func:`mmvid.corruptions.audio_noise_snr`), sigma on the [0, 1] pixel scale for frames, sigma in
  pixels/frame for flow; on one modality, on each in turn (``each``), or on all at once (``all``).
* corruptions with named severities (light / medium / heavy): frame ``blur``, frame
  ``occlusion``, ``audio-dropout`` (values in :data:`CORRUPTIONS`).

The randomness of a condition comes from a generator seeded by (seed, condition name), and the
evaluation batch size is fixed, so two runs are compared on identical inputs.
"""

from __future__ import annotations

import csv
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmvid import corruptions as C
from mmvid.data.torch_dataset import finish_batch
from mmvid.engine.evaluation import evaluate_model
from mmvid.errors import MmvidError
from mmvid.results.evaluation import LoadedRun, checkpoint_note, load_run
from mmvid.results.plotting import PANEL, pyplot, save_figure
from mmvid.runfiles import check_run
from mmvid.workspace import write_atomic

MODALITY_ALIASES = {"audio": "audio", "video": "video", "rgb": "video", "frames": "video", "flow": "flow"}
FILLS = ("zero", "mean")
NOISE_LEVELS = {"audio": [20.0, 10.0, 0.0, -10.0], "video": [0.1, 0.2, 0.4, 0.8], "flow": [1.0, 2.0, 4.0, 8.0]}
NOISE_UNITS = {"audio": "SNR dB", "video": "sigma, pixels in [0, 1]", "flow": "sigma, pixels/frame"}


@dataclass(frozen=True)
class Corruption:
    modalities: tuple[str, ...]
    fn: Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]
    severities: dict[str, float]
    unit: str


CORRUPTIONS = {
    "blur": Corruption(("video",), C.blur, {"light": 1 / 64, "medium": 1 / 32, "heavy": 1 / 16}, "Gaussian sigma / frame side"),
    "occlusion": Corruption(("video",), C.occlude, {"light": 0.1, "medium": 0.25, "heavy": 0.5}, "occluded fraction of the frame"),
    "audio-dropout": Corruption(("audio",), C.audio_dropout, {"light": 0.25, "medium": 0.5, "heavy": 0.75}, "silenced fraction of time"),
}


def parse_modality(name: str, available: list[str] | None = None) -> str:
    m = MODALITY_ALIASES.get(name.strip().lower())
    if m is None:
        raise MmvidError(f"unknown modality {name!r}; choose one of: audio, video, flow")
    if available is not None and m not in available:
        raise MmvidError(f"the run has no {m} modality (it uses {', '.join(available)})")
    return m


@dataclass(frozen=True)
class Condition:
    """One test condition. ``family`` is a panel of the plot, ``severity`` a tick on its x axis;
    ``params`` are (modality, level) pairs, e.g. (("audio", 10.0),) for audio noise at 10 dB SNR."""

    name: str
    family: str
    severity: str
    op: str  # "drop" | "noise" | a key of CORRUPTIONS
    params: tuple[tuple[str, float], ...]
    fill: str | None = None
    unit: str = ""  # of the severities, for the plot's x axis

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(m for m, _ in self.params)

    def apply(self, inputs: dict[str, torch.Tensor], gen: torch.Generator,
              means: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(inputs)
        for m, level in self.params:
            x = inputs[m]
            if self.op == "drop":
                out[m] = torch.zeros_like(x) if self.fill == "zero" else means[m].to(x.device, x.dtype).expand_as(x).clone()
            elif self.op == "noise":
                out[m] = C.gaussian_noise(m, x, level, gen)
            else:
                out[m] = CORRUPTIONS[self.op].fn(x, level, gen)
        return out


def parse_levels(items: list[str] | None, modality: str) -> dict[str, list[float]]:
    """``["20,10,0"]`` (for the one modality asked) or ``["audio=20,10", "video=0.1,0.2"]`` -> levels per modality."""
    out: dict[str, list[float]] = {}
    for item in items or []:
        key, _, values = item.rpartition("=")
        if not key:
            if modality not in MODALITY_ALIASES:
                raise MmvidError(f"--levels {item!r} needs a modality when noising {modality}: e.g. --levels audio=20,10,0")
            key = modality
        try:
            out[parse_modality(key)] = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise MmvidError(f"--levels {item!r} must be numbers separated by commas, e.g. 20,10,0") from None
    return out


def _fmt_level(m: str, level: float) -> str:
    return f"{level:g} dB" if m == "audio" else f"sigma {level:g}"


def build_conditions(available: list[str], drop: list[str] | None = None, fill: str = "zero", noise: str | None = None,
                     modality: str = "each", levels: dict[str, list[float]] | None = None,
                     corruptions: list[str] | None = None, severities: list[str] | None = None) -> list[Condition]:
    """The conditions asked for, checked against the modalities that at least one run uses."""
    if levels and noise is None:
        raise MmvidError("--levels sets noise levels; add --noise gaussian")
    if severities and not corruptions:
        raise MmvidError("--severities picks corruption severities; add --corruptions blur,occlusion,audio-dropout")
    conds: list[Condition] = []
    fills = list(FILLS) if fill == "both" else [fill]
    if any(f not in FILLS for f in fills):
        raise MmvidError(f"--fill {fill!r} is not valid; choose zero, mean or both")
    for name in drop or []:
        m = parse_modality(name, available)
        for f in fills:
            conds.append(Condition(f"drop {m} ({f})", "missing modality", f"no {m} ({f})", "drop", ((m, 0.0),), f,
                                   "input replaced by zeros or the training mean"))
    if noise is not None:
        if noise != "gaussian":
            raise MmvidError(f"--noise {noise!r} is not valid; the one noise model is gaussian")
        levels = levels or {}
        if modality in ("each", "all"):
            mods = [m for m in NOISE_LEVELS if m in available]
        else:
            mods = [parse_modality(modality, available)]
        for m in levels:
            if m not in mods:
                raise MmvidError(f"--levels names {m}, but the noise goes on {', '.join(mods)}; pick --modality {m}")
        lv = {m: levels.get(m, NOISE_LEVELS[m]) for m in mods}
        if modality == "all":
            n = len(next(iter(lv.values())))
            if any(len(v) != n for v in lv.values()):
                raise MmvidError("--modality all needs the same number of --levels for every modality (one per severity)")
            for k in range(n):
                params = tuple((m, lv[m][k]) for m in mods)
                label = " + ".join(f"{m} {_fmt_level(m, v)}" for m, v in params)
                conds.append(Condition(f"noise all {label}", "Gaussian noise, all modalities", f"level {k + 1}", "noise", params,
                                       unit="; ".join(f"{m} {', '.join(f'{v:g}' for v in lv[m])} ({NOISE_UNITS[m]})" for m in mods)))
        else:
            for m in mods:
                for v in lv[m]:
                    conds.append(Condition(f"noise {m} {_fmt_level(m, v)}", f"Gaussian noise on {m}",
                                           _fmt_level(m, v), "noise", ((m, v),), unit=NOISE_UNITS[m]))
    names = list(CORRUPTIONS) if corruptions and "all" in corruptions else list(corruptions or [])
    for name in names:
        if name not in CORRUPTIONS:
            raise MmvidError(f"unknown corruption {name!r}; choose from: {', '.join(CORRUPTIONS)} (or all)")
        spec = CORRUPTIONS[name]
        mods = [m for m in spec.modalities if m in available]
        if not mods:
            raise MmvidError(f"corruption {name} needs {'/'.join(spec.modalities)}, which none of the runs uses")
        for sev in severities or list(spec.severities):
            if sev not in spec.severities:
                raise MmvidError(f"unknown severity {sev!r}; choose from: {', '.join(spec.severities)}")
            conds.append(Condition(f"{name} {sev}", name, sev, name, tuple((m, spec.severities[sev]) for m in mods),
                                   unit=f"{spec.unit}: " + ", ".join(f"{k} {v:.3g}" for k, v in spec.severities.items())))
    if not conds:
        raise MmvidError("say what to test: --drop audio, --noise gaussian, or --corruptions blur,occlusion,audio-dropout")
    return conds


def training_mean(lr: LoadedRun, modality: str, batch_size: int = 64) -> torch.Tensor:
    """Mean input of ``modality`` over the run's training rows (eval preprocessing): (1, *item shape)."""
    total, n = None, 0
    for inputs, _ in lr.loader(np.asarray(lr.ck["splits"]["train"]), batch_size=batch_size):
        x = finish_batch(inputs)[modality].double()
        total = x.sum(0) if total is None else total + x.sum(0)
        n += x.shape[0]
    return (total / max(n, 1)).float()[None]


def condition_generator(seed: int, cond: Condition) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(cond.name.encode()))


def evaluate_conditions(lr: LoadedRun, conditions: list[Condition], batch_size: int = 32, seed: int = 0) -> dict[str, Any]:
    """Clean and per-condition accuracy of one loaded run. ``changed``: fraction of test clips whose
    fused prediction differs from the clean one. A condition on a modality the run lacks gets None."""
    model = lr.model
    loader = lr.loader(batch_size=batch_size)
    clean = evaluate_model(model, loader, lr.device, keep=True)
    need_mean = {m for c in conditions if c.fill == "mean" for m in c.modalities if m in model.modalities}
    means = {m: training_mean(lr, m) for m in sorted(need_mean)}
    results: dict[str, dict[str, Any] | None] = {}
    for cond in conditions:
        if any(m not in model.modalities for m in cond.modalities):
            results[cond.name] = None
            continue
        gen = condition_generator(seed, cond)
        res = evaluate_model(model, loader, lr.device, keep=True,
                             transform=lambda inputs, y, c=cond, g=gen: c.apply(inputs, g, means))
        results[cond.name] = {"acc": res.acc, "changed": float((res.preds != clean.preds).mean()),
                              "modality_accuracy": {m: res.modality_acc(m) for m in model.modalities}}
    return {"run": str(lr.run), "name": lr.run.name, "method": lr.label, **lr.origin, "split": lr.split, "n": clean.n,
            "clean_acc": clean.acc, "chance": 1.0 / lr.info.num_classes, "results": results}


@dataclass
class RobustnessReport:
    conditions: list[Condition]
    runs: list[dict[str, Any]]
    out_dir: Path
    files: list[Path] = field(default_factory=list)

    def acc(self, run: dict[str, Any], cond: Condition | None) -> float | None:
        if cond is None:
            return run["clean_acc"]
        r = run["results"][cond.name]
        return None if r is None else r["acc"]

    def labels(self) -> list[str]:
        """Legend / column label per run: the method, plus the run name where two runs share it."""
        methods = [r["method"] for r in self.runs]
        return [m if methods.count(m) == 1 else f"{m} ({r['name']})" for m, r in zip(methods, self.runs)]


def default_out_dir(runs: list[Path], workspace: Path | None = None) -> Path:
    """``<run>/robustness`` for one run; for several, ``comparisons/robustness-<time>`` of ``workspace`` (the
    command's: runs given by their paths elsewhere do not make mmvid write beside them), else of the first run's."""
    if len(runs) == 1:
        return runs[0] / "robustness"
    return (workspace or runs[0].parent.parent) / "comparisons" / f"robustness-{time.strftime('%Y%m%d-%H%M%S')}"


def compare_robustness(runs: list[str | Path], drop: list[str] | None = ("audio",), fill: str = "zero",
                       noise: str | None = None, modality: str = "each", levels: dict[str, list[float]] | None = None,
                       corruptions: list[str] | None = None, severities: list[str] | None = None, split: str = "test",
                       device: str = "auto", out_dir: Path | None = None, console=None, batch_size: int = 32,
                       seed: int = 0, plot: bool = True, cache: str | Path | None = None) -> RobustnessReport:
    """Evaluate every run under every condition; write ``robustness.csv`` (one row per condition,
    one accuracy column per run), ``robustness.json`` (all details) and ``robustness.png/.svg``
    (accuracy against severity, a panel per condition family, a line per run) into ``out_dir``;
    print the table (and the cache of each run) when ``console`` is given. ``cache``: read every run's
    clips from this cache (default: each run's own, see :func:`mmvid.runfiles.resolve_run_cache`).
    E.g. concat vs concat+bmm with audio missing::

        compare_robustness([run_concat, run_bmm], drop=["audio"], fill="both")
    """
    for r in runs:  # every run's files before any model is loaded
        check_run(Path(r).parent if Path(r).is_file() else Path(r))
    loaded = [load_run(r, split, device, cache) for r in runs]
    if len({tuple(lr.info.class_names) for lr in loaded}) > 1:
        raise MmvidError("the runs were trained on different class sets; compare runs of one dataset")
    available = sorted({m for lr in loaded for m in lr.model.modalities})
    conditions = build_conditions(available, list(drop or []), fill, noise, modality, levels, corruptions, severities)
    report = RobustnessReport(conditions, [evaluate_conditions(lr, conditions, batch_size, seed) for lr in loaded],
                              Path(out_dir) if out_dir else default_out_dir([lr.run for lr in loaded]))
    report.out_dir.mkdir(parents=True, exist_ok=True)
    report.files = [write_csv(report), write_json(report)]
    if plot:
        report.files += plot_robustness(report, report.out_dir / "robustness")
    if console is not None:
        for lr in loaded:
            console.print(lr.cache.line(lr.run), soft_wrap=True, highlight=False)
        render(report, console)
    return report


def plot_robustness(report: RobustnessReport, stem: Path) -> list[Path]:
    """Accuracy (%) against severity: a panel per condition family starting from "clean", a line
    per run, chance as a dotted line."""
    plt = pyplot()
    families: dict[str, list] = {}
    for c in report.conditions:
        families.setdefault(c.family, []).append(c)
    nc = min(3, len(families))
    nr = math.ceil(len(families) / nc)
    fig, axes = plt.subplots(nr, nc, figsize=(PANEL[0] * nc, PANEL[1] * nr + 0.5), layout="constrained", squeeze=False)
    labels = report.labels()
    for ax, (family, conds) in zip(axes.flat, families.items()):
        ticks = ["clean"] + [c.severity for c in conds]
        for i, (run, lbl) in enumerate(zip(report.runs, labels)):
            ys = [report.acc(run, c) for c in [None, *conds]]
            ax.plot(range(len(ticks)), [np.nan if v is None else 100 * v for v in ys], marker="o", color=f"C{i}", label=lbl)
        ax.axhline(100 * report.runs[0]["chance"], color="grey", ls=":", lw=1, label="chance")
        ax.set_xticks(range(len(ticks)), ticks, rotation=20 if len(ticks) > 4 else 0, fontsize=8)
        ax.set(title=family, ylabel="accuracy (%)", ylim=(0, 101))
        ax.set_xlabel(conds[0].unit, fontsize=8, wrap=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(families):]:
        ax.remove()
    r0 = report.runs[0]
    fig.suptitle(f"robustness on {r0['split']} ({r0['n']} clips)")
    return save_figure(fig, stem)


def table_rows(report: RobustnessReport) -> list[tuple[Condition | None, list[float | None]]]:
    """(condition, accuracy per run) for "clean" (None) and then each condition."""
    return [(c, [report.acc(r, c) for r in report.runs]) for c in [None, *report.conditions]]


def write_csv(report: RobustnessReport) -> Path:
    path = report.out_dir / "robustness.csv"
    labels = report.labels()
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["condition", "family", "severity", "params"] + [f"acc {lbl}" for lbl in labels]
                   + [f"change {lbl}" for lbl in labels])
        for cond, accs in table_rows(report):
            base = [r["clean_acc"] for r in report.runs]
            head = ["clean", "clean", "clean", ""] if cond is None else \
                [cond.name, cond.family, cond.severity, " ".join(f"{m}={v:g}" for m, v in cond.params)]
            w.writerow(head + ["" if a is None else f"{a:.6f}" for a in accs]
                       + ["" if a is None else f"{a - b:+.6f}" for a, b in zip(accs, base)])
    return path


def write_json(report: RobustnessReport) -> Path:
    path = report.out_dir / "robustness.json"
    data = {"conditions": [asdict(c) for c in report.conditions], "runs": report.runs, "labels": report.labels(),
            "notes": {"audio noise": "SNR in dB on the linear STFT magnitude (complex Gaussian per bin)",
                      "video noise": "sigma on the [0, 1] pixel scale", "flow noise": "sigma in pixels/frame",
                      "drop zero": "the modality's input set to 0", "drop mean": "the modality's training-set mean input",
                      "corruptions": {k: {"modalities": list(v.modalities), "unit": v.unit, "severities": v.severities}
                                      for k, v in CORRUPTIONS.items()}}}
    write_atomic(path, json.dumps(data, indent=2))
    return path


def render(report: RobustnessReport, console) -> None:
    """Rich table: one row per condition, one column per run (accuracy and change from clean)."""
    from rich.table import Table

    r0 = report.runs[0]
    table = Table(title=f"robustness on {r0['split']} ({r0['n']} clips; chance {100 * r0['chance']:.1f}%)")
    table.add_column("condition")
    for lbl in report.labels():
        table.add_column(lbl, justify="right")
    base = [r["clean_acc"] for r in report.runs]
    for cond, accs in table_rows(report):
        cells = [("n/a" if a is None else f"{100 * a:.2f}%" + ("" if cond is None else f" ({100 * (a - b):+.1f})"))
                 for a, b in zip(accs, base)]
        table.add_row("clean" if cond is None else cond.name, *cells)
    console.print(table)
    console.print("checkpoints: " + "; ".join(f"{lbl}: {checkpoint_note(r)}" for lbl, r in zip(report.labels(), report.runs)),
                  soft_wrap=True, highlight=False)
    for f in report.files:
        console.print(f"wrote {f}", soft_wrap=True, highlight=False)
