"""Diagnose one trained run: every measure, the statements of what was measured, and the files.

What a diagnosis holds (each figure on the train split and on held-out data):

* the Shapley values of the modalities in the fused model (mmvid.results.diagnosis.shapley, summarised by
  mmvid.results.diagnosis.dominance), from one pass per split (mmvid.results.diagnosis.passes);
* linear probes on each encoder, beside a run of each modality alone (mmvid.results.diagnosis.probes, .runs);
* memorisation and rho over the epochs (mmvid.results.diagnosis.curves) and the bounded conditional utilisation
  rate (mmvid.results.diagnosis.utilisation).

Outputs: a Rich summary (measurements and the methods aimed at each pattern, no verdicts: some imbalance can
help), ``diagnosis.json``, ``samples_<split>.csv``, the figures and a self-contained ``diagnosis.html``
(mmvid.results.diagnosis.page)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmvid.engine.checkpoints import model_from_checkpoint
from mmvid.errors import MmvidError
from mmvid.results.diagnosis.curves import curves
from mmvid.results.diagnosis.dominance import shapley_summary, write_samples
from mmvid.results.diagnosis.page import render, write_html
from mmvid.results.diagnosis.passes import SPLITS, SplitPass, split_pass
from mmvid.results.diagnosis.plots import plot_diagnosis
from mmvid.results.diagnosis.probes import linear_probe
from mmvid.results.diagnosis.runs import alone_config, ensure_run
from mmvid.results.diagnosis.utilisation import utilisation
from mmvid.results.evaluation import LoadedRun, load_run, method_label
from mmvid.runfiles import read_metrics
from mmvid.workspace import write_atomic

# Which family of methods targets which measured pattern (docs/methods.md has each method).
TARGETS = {
    "dominance": ("one modality carries most of the Shapley value",
                  ["ogm-ge", "agm", "opm", "pmr", "bmm", "inforeg"]),
    "underlearned": ("an encoder of the fused model probes below the same modality trained alone",
                     ["mmpareto", "mla", "relearn", "greedy", "umt", "reconboost"]),
    "memorising": ("a modality's train accuracy runs far ahead of its held-out accuracy",
                   ["bmm", "mm", "relearn", "inforeg", "remix"]),
}


@dataclass
class Diagnosis:
    """A diagnosed run: its folder, the output folder, what diagnosis.json holds and the files written."""

    run: Path
    out: Path
    data: dict[str, Any]
    files: list[Path] = field(default_factory=list)


def diagnose_run(run: str | Path, console, out: Path | None = None, checkpoint: str = "last", alone: bool = True,
                 device: str = "auto", top: int = 10, budget: dict[str, Any] | None = None,
                 cache: str | Path | None = None) -> Diagnosis:
    """Diagnose a trained run (folder): Shapley values, probes against alone-trained runs, memorisation and
    rho curves; writes ``diagnosis.json``, the figures and ``diagnosis.html`` into ``out`` (default
    ``<run>/diagnosis``). ``alone`` trains (or reuses) one run per modality inside ``out``. ``cache``: read
    the clips from this cache instead of the run's own (mmvid.runfiles.resolve_run_cache)."""
    lr = load_run(run, "test", device, cache, checkpoint=checkpoint)
    run, model, info = lr.run, lr.model, lr.info
    mods = list(model.modalities)
    if len(mods) < 2:
        raise MmvidError(f"run {run} has one modality ({mods[0]}); diagnose compares modalities, train a multimodal run")
    out = Path(out or run / "diagnosis")
    out.mkdir(parents=True, exist_ok=True)
    rows = {"train": lr.split_rows("train"), "test": lr.split_rows("test")}
    if not len(rows["test"]):
        rows["test"] = lr.split_rows("val")
    console.print(f"diagnosing {run.name} ({method_label(lr.ck['config'])}, {lr.note}) on "
                  f"{len(rows['train'])} train and {len(rows['test'])} held-out clips", soft_wrap=True)
    console.print(lr.cache.line(run), soft_wrap=True, highlight=False)
    passes = {k: split_pass(model, lr.loader(rows=r), lr.device, r) for k, r in rows.items()}
    data: dict[str, Any] = {"run": str(run), "method": method_label(lr.ck["config"]), "checkpoint": lr.origin,
                            "modalities": mods, "class_names": info.class_names, "cache": str(info.path),
                            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    if budget:
        data["budget"] = budget
    data["shapley"] = {k: shapley_summary(p, mods, info.class_names, info.names, top) for k, p in passes.items()}
    data["utilisation"] = {
        k: {m: utilisation(s["coalition_accuracy"]["+".join(sorted(mods))],
                           s["coalition_accuracy"]["+".join(sorted(set(mods) - {m}))]) for m in mods}
        for k, s in data["shapley"].items()}
    data["probes"] = probe_encoders(lr, passes, rows, out, console, alone)
    recs = read_metrics(run, required=False)
    data["curves"] = curves(recs, mods) if recs else {}
    data["measured"] = measured(data)
    return write_diagnosis(Diagnosis(run, out, data), passes, info, console)


def probe_encoders(lr: LoadedRun, passes: dict[str, SplitPass], rows: dict[str, np.ndarray], out: Path, console,
                   alone: bool) -> dict[str, dict[str, Any]]:
    """Per modality: the linear probe on the fused run's encoder and, with ``alone``, on the encoder of a run of
    that modality alone (trained or reused in ``out/alone-<m>``) and that run's own accuracy."""
    mods, info = list(lr.model.modalities), lr.info
    found = {m: {"fused_encoder": linear_probe(passes["train"].features[m], passes["train"].labels,
                                               passes["test"].features[m], passes["test"].labels, info.num_classes)}
             for m in mods}
    if alone:
        for m in mods:
            acfg = alone_config(lr.cfg, m)
            arun = ensure_run(acfg, info.path, out / f"alone-{m}", console, f"{m} alone")
            amodel, _, _ = model_from_checkpoint(arun / "checkpoint_last.pt")
            amodel.to(lr.device).eval()
            ap = {k: split_pass(amodel, lr.loader(rows=r), lr.device, r) for k, r in rows.items()}
            found[m]["alone_encoder"] = linear_probe(ap["train"].features[m], ap["train"].labels,
                                                     ap["test"].features[m], ap["test"].labels, info.num_classes)
            found[m]["alone_run"] = {k: float(ap[k].correct[frozenset({m})].mean()) for k in SPLITS}
            found[m]["alone_epochs"] = acfg.epochs
    return found


def write_diagnosis(diag: Diagnosis, passes: dict[str, SplitPass], info, console) -> Diagnosis:
    """``diagnosis.json``, ``samples_<split>.csv``, the figures and ``diagnosis.html`` into ``diag.out``; then
    the Rich summary."""
    data, out, mods = diag.data, diag.out, diag.data["modalities"]
    write_atomic(out / "diagnosis.json", json.dumps(data, indent=2, default=float))
    diag.files.append(out / "diagnosis.json")
    for k, p in passes.items():
        diag.files.append(write_samples(p, mods, info, out / f"samples_{k}.csv"))
    figs = plot_diagnosis(data, out / "figures")
    diag.files += figs + [write_html(data, figs, out / "diagnosis.html")]
    render(data, console)
    return diag


def measured(data: dict[str, Any]) -> list[dict[str, Any]]:
    """What was measured, pattern by pattern, with the methods aimed at it and the figure that shows it.
    Statements of measurement only (no verdict: recent work argues some imbalance helps)."""
    mods, out = data["modalities"], []
    for split in SPLITS:
        share = data["shapley"][split]["share"]
        top = max(mods, key=lambda m: share[m])
        out.append({"pattern": "dominance", "split": split, "modality": top,
                    "text": f"{top} carries {100 * share[top]:.0f}% of the Shapley value on {split} "
                            f"(" + ", ".join(f"{m} {data['shapley'][split]['phi'][m]:+.3f}" for m in mods) + ")",
                    "figure": "shapley_per_class.png"})
    for m, p in data["probes"].items():
        if "alone_encoder" in p:
            d = p["fused_encoder"]["test"] - p["alone_encoder"]["test"]
            out.append({"pattern": "underlearned", "split": "test", "modality": m, "probe_difference": d,
                        "text": f"a linear probe on {m}'s encoder in the fused model scores {100 * p['fused_encoder']['test']:.1f}% "
                                f"held out; on the encoder trained on {m} alone {100 * p['alone_encoder']['test']:.1f}% "
                                f"({100 * d:+.1f} points)", "figure": "probes.png"})
    c = data.get("curves") or {}
    held = c.get("held_out", "test")
    for m in mods:
        gaps = [g for g in c.get(f"gap_{m}", []) if g is not None]
        if gaps:
            out.append({"pattern": "memorising", "split": f"train-{held}", "modality": m, "gap": gaps[-1],
                        "text": f"{m} alone: train minus {held} accuracy {100 * gaps[-1]:+.1f} points at the last epoch "
                                f"(largest {100 * max(gaps):+.1f})", "figure": "memorisation.png"})
    if c.get("learned_first"):
        sc, k = c["early_score"], c["early_epochs"]
        out.append({"pattern": "order", "split": "train", "modality": c["learned_first"],
                    "text": f"{c['learned_first']} was learned first: its train score s_m (Eq. 5) summed over the first "
                            f"{k} epochs was the largest (" + ", ".join(f"{m} {v:.1f}" for m, v in sc.items()) + "); train accuracy reached "
                            f"half its best at epoch " + ", ".join(f"{m} {e}" for m, e in c["epoch_to_half_best"].items()),
                    "figure": "rho.png"})
    worst_gap = max((i for i in out if i["pattern"] == "memorising"), key=lambda i: i["gap"], default=None)
    for item in out:
        # Methods are named only where the measurement shows the pattern they target.
        shows = {"dominance": True, "underlearned": item.get("probe_difference", 0.0) < 0,
                 "memorising": item is worst_gap and item.get("gap", 0.0) > 0}.get(item["pattern"], False)
        if shows:
            item["methods"] = TARGETS[item["pattern"]][1]
    return out
