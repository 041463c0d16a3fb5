"""``mmvid diagnose``: what modality imbalance looks like on a user's own data, measured, with the
methods that target each pattern. Every figure is given on the train split and on held-out data.

* **Shapley values of the modalities** in the fused model, exact: a coalition S of modalities is the
  fused model with the features of every modality outside S set to zero (paper Eq. 5's masking), its
  value v_i(S) the probability of sample i's true class (and, as a second view, whether it is
  predicted). With M modalities there are 2^M coalitions, so the exact value is cheap:
  phi_m = sum_{S subset of M minus m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)),
  per sample, then averaged per class and over the split. Efficiency: sum_m phi_m = v(M) - v(empty).
* **Linear probes**: how much each encoder of the fused model learned. A softmax regression on the
  frozen features of modality m (train split) is scored on held-out data, beside the same probe on the
  encoder of a run trained on m alone for the same epochs and that run's own accuracy (the paper's
  "insufficiently learned" argument, its Fig. 1(c), as a number).
* **Memorisation**: train minus held-out accuracy of each modality (masking) over the epochs.
* **rho over epochs** (Eq. 6, s_strong / s_weak) on the train monitor and on held-out data, and the
  conditional utilisation rate of Wu et al. 2022 (Greedy), bounded: u_m = (A(M) - A(M minus m)) /
  max(A(M), A(M minus m)) in [-1, 1]. Wu et al. divide by A(M) only, which leaves [-1, 1] when the
  model does worse with m than without it (Greedy issue #1); where A(M) >= A(M minus m) the two agree.

Outputs: a Rich summary (measurements and the methods aimed at each pattern, no verdicts: some
imbalance can help), ``diagnosis.json`` and a self-contained ``diagnosis.html`` with the figures.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmvid.errors import MmvidError
from mmvid.runfiles import read_config, read_metrics
from mmvid.workspace import write_atomic

SPLITS = ("train", "test")  # train split and held-out data
# Which family of methods targets which measured pattern (docs/methods.md has each method).
TARGETS = {
    "dominance": ("one modality carries most of the Shapley value",
                  ["ogm-ge", "agm", "opm", "pmr", "bmm", "inforeg"]),
    "underlearned": ("an encoder of the fused model probes below the same modality trained alone",
                     ["mmpareto", "mla", "relearn", "greedy", "umt", "reconboost"]),
    "memorising": ("a modality's train accuracy runs far ahead of its held-out accuracy",
                   ["bmm", "mm", "relearn", "inforeg", "remix"]),
}


# ----------------------------------------------------------------------------- Shapley


def coalitions(modalities: list[str]) -> list[frozenset[str]]:
    """Every subset of the modalities, the empty one first (2^M of them)."""
    return [frozenset(c) for k in range(len(modalities) + 1) for c in itertools.combinations(modalities, k)]


def shapley(values: dict[frozenset[str], np.ndarray], modalities: list[str]) -> dict[str, np.ndarray]:
    """Exact Shapley values per sample: ``values`` maps each coalition to v(S) of shape (N,); returns
    m -> phi_m (N,) with the weights |S|! (M - |S| - 1)! / M!."""
    n = len(modalities)
    out = {}
    for m in modalities:
        phi = np.zeros_like(values[frozenset()], dtype=np.float64)
        for s in values:
            if m in s:
                continue
            w = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            phi = phi + w * (values[s | {m}] - values[s])
        out[m] = phi
    return out


@dataclass
class SplitPass:
    """One eval-mode pass over a split: labels (N,), cache rows (N,), each modality's features (N, d_m)
    and, per coalition, the true-class probability and correctness (N,) of the masked fused model."""

    labels: np.ndarray
    rows: np.ndarray
    features: dict[str, np.ndarray]
    prob: dict[frozenset[str], np.ndarray]
    correct: dict[frozenset[str], np.ndarray]


def split_pass(model, loader, device, rows: np.ndarray, amp: str = "off") -> SplitPass:
    """Features and every coalition's value (Eq. 5 masking) over one split, in the loader's order."""
    import torch

    from mmvid.engine.loaders import to_device
    from mmvid.engine.runtime import autocast

    mods, subsets = model.modalities, coalitions(model.modalities)
    model.eval()
    labels, feats = [], {m: [] for m in mods}
    prob = {s: [] for s in subsets}
    correct = {s: [] for s in subsets}
    with torch.no_grad():
        for inputs, y in loader:
            inputs, y = to_device(inputs, device), y.to(device)
            with autocast(device, amp):
                raw = model.encode(inputs, calibrate=False)
            raw = {m: v.float() for m, v in raw.items()}
            z = model.masked_features(raw, mods)  # every modality present: the features the fusion sees
            for s in subsets:
                logits = model.masked_logits(raw, s).float()  # the modalities outside s absent (Eq. 5)
                prob[s].append(logits.softmax(1).gather(1, y[:, None])[:, 0].double().cpu())
                correct[s].append((logits.argmax(1) == y).double().cpu())
            labels.append(y.cpu())
            for m in mods:
                feats[m].append(z[m].cpu())
    cat = lambda xs: torch.cat(xs).numpy()  # noqa: E731
    return SplitPass(cat(labels), np.asarray(rows), {m: cat(v) for m, v in feats.items()},
                     {s: cat(v) for s, v in prob.items()}, {s: cat(v) for s, v in correct.items()})


def balancebenchmark_shapley(acc: dict[frozenset[str], float], modalities: list[str]) -> dict[str, float]:
    """BalanceBenchmark's "Shapley" imbalance figure (``Calculate_Shapley`` in balancemm/evaluation/modalitys.py,
    default ``include_empty=False``): for each m, the unweighted sum of acc(S + m) - acc(S) over the non-empty
    coalitions S without m (for two modalities: acc(all) - acc(the other alone)). Not the weighted Shapley
    value (:func:`shapley`); kept so a figure can be compared with theirs."""
    return {m: float(sum(acc[s | {m}] - acc[s] for s in acc if s and m not in s)) for m in modalities}


def shares(phi: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-sample share of each modality: phi_m / sum_k |phi_k| (0 where every phi is 0)."""
    total = sum(np.abs(v) for v in phi.values())
    return {m: np.divide(v, total, out=np.zeros_like(v), where=total > 1e-12) for m, v in phi.items()}


def shapley_summary(sp: SplitPass, modalities: list[str], class_names: list[str], names: list[str],
                    top: int = 10) -> dict[str, Any]:
    """Mean Shapley values (probability and accuracy views), per class, and the samples and classes most
    dominated by one modality (largest share phi_m / sum_k |phi_k|)."""
    empty, full = frozenset(), frozenset(modalities)
    phi = shapley(sp.prob, modalities)
    phi_acc = shapley(sp.correct, modalities)
    share = shares(phi)
    per_class = {}
    for c, cname in enumerate(class_names):
        idx = sp.labels == c
        if idx.any():
            per_class[cname] = {"n": int(idx.sum()), **{m: float(phi[m][idx].mean()) for m in modalities}}
    dominated = []
    for m in modalities:
        order = np.argsort(-share[m], kind="stable")[:top]
        dominated += [{"modality": m, "name": names[int(sp.rows[i])], "class": class_names[int(sp.labels[i])],
                       "share": float(share[m][i]), "phi": {k: float(phi[k][i]) for k in modalities}}
                      for i in order if share[m][i] > 0]
    class_share = {c: {m: v[m] / max(sum(abs(v[k]) for k in modalities), 1e-12) for m in modalities}
                   for c, v in per_class.items()}
    return {
        "n": int(len(sp.labels)),
        "value_full": float(sp.prob[full].mean()), "value_empty": float(sp.prob[empty].mean()),
        "accuracy_full": float(sp.correct[full].mean()), "accuracy_empty": float(sp.correct[empty].mean()),
        "phi": {m: float(phi[m].mean()) for m in modalities},
        "phi_accuracy": {m: float(phi_acc[m].mean()) for m in modalities},
        "share": {m: float(phi[m].mean() / max(sum(abs(phi[k].mean()) for k in modalities), 1e-12)) for m in modalities},
        "coalition_accuracy": {"+".join(sorted(s)) or "none": float(v.mean()) for s, v in sp.correct.items()},
        "balancebenchmark_shapley": balancebenchmark_shapley({s: float(v.mean()) for s, v in sp.correct.items()}, modalities),
        "per_class": per_class,
        "class_share": class_share,
        "most_dominated_samples": dominated,
        "most_dominated_classes": {m: sorted(class_share, key=lambda c: -class_share[c][m])[:3] for m in modalities},
    }


def write_samples(sp: SplitPass, modalities: list[str], info, path: Path) -> Path:
    """One row per clip: name, class, each modality's Shapley value and share, and the fused model's
    true-class probability and correctness (every coalition's value is in the columns ``v_<coalition>``)."""
    import csv

    phi = shapley(sp.prob, modalities)
    share = shares(phi)
    subsets = coalitions(modalities)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "class", *[f"phi_{m}" for m in modalities], *[f"share_{m}" for m in modalities],
                    *[f"v_{'+'.join(sorted(s)) or 'none'}" for s in subsets], "correct"])
        full = frozenset(modalities)
        for i in range(len(sp.labels)):
            w.writerow([info.names[int(sp.rows[i])], info.class_names[int(sp.labels[i])],
                        *[f"{phi[m][i]:.6g}" for m in modalities], *[f"{share[m][i]:.4f}" for m in modalities],
                        *[f"{sp.prob[s][i]:.6g}" for s in subsets], int(sp.correct[full][i])])
    return path


def utilisation(acc_all: float, acc_without: float) -> float:
    """Conditional utilisation rate of a modality, bounded to [-1, 1]: (A(M) - A(M minus m)) / max of the two
    (Wu et al. 2022 divide by A(M), and equal this whenever A(M) >= A(M minus m)); 0 when both are 0."""
    top = max(acc_all, acc_without)
    return 0.0 if top <= 0 else (acc_all - acc_without) / top


# ----------------------------------------------------------------------------- linear probes


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 num_classes: int, l2: float = 1e-3, iters: int = 200) -> dict[str, float]:
    """Softmax regression on frozen features (standardised with train statistics), full-batch L-BFGS in
    float64 from zero weights: deterministic, so a probe is reproducible. Returns train and held-out accuracy."""
    import torch

    x = torch.as_tensor(train_x, dtype=torch.float64)
    mu, sd = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    x = (x - mu) / sd
    xt = (torch.as_tensor(test_x, dtype=torch.float64) - mu) / sd
    y = torch.as_tensor(train_y, dtype=torch.long)
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        tr = float(((x @ w + b).argmax(1) == y).double().mean())
        te = float(((xt @ w + b).argmax(1) == torch.as_tensor(test_y)).double().mean())
    return {"train": tr, "test": te}


# ----------------------------------------------------------------------------- curves from metrics.jsonl


def curves(recs: list[dict[str, Any]], modalities: list[str]) -> dict[str, Any]:
    """Per epoch: each modality's train and held-out accuracy (masking) and their gap (memorisation),
    rho on train and held out, the bounded utilisation rate (two modalities: A(M minus m) is the other
    modality alone), and which modality was learned first (its train accuracy reached half its best first)."""
    held = "test" if any("test_acc" in r for r in recs) else "val"
    get = lambda r, k: None if r.get(k) is None else float(r[k])  # noqa: E731
    out: dict[str, Any] = {"epoch": [int(r["epoch"]) + 1 for r in recs], "held_out": held}
    for m in modalities:
        tr = [get(r, f"train_acc_{m}") for r in recs]
        te = [get(r, f"{held}_acc_{m}") for r in recs]
        out[f"train_acc_{m}"], out[f"{held}_acc_{m}"] = tr, te
        out[f"gap_{m}"] = [None if a is None or b is None else a - b for a, b in zip(tr, te)]
    out["train_rho"] = [get(r, "train_rho") if "train_rho" in r else get(r, "rho") for r in recs]
    out[f"{held}_rho"] = [get(r, f"{held}_rho") for r in recs]
    if len(modalities) == 2:
        for split in ("train", held):
            for m in modalities:
                other = [k for k in modalities if k != m][0]
                out[f"{split}_utilisation_{m}"] = [
                    None if r.get(f"{split}_acc") is None or r.get(f"{split}_acc_{other}") is None
                    else utilisation(float(r[f"{split}_acc"]), float(r[f"{split}_acc_{other}"])) for r in recs]
    half = {}
    for m in modalities:
        tr = [v for v in out[f"train_acc_{m}"] if v is not None]
        if tr:
            half[m] = next(i for i, v in enumerate(tr) if v >= 0.5 * max(tr)) + 1
    out["epoch_to_half_best"] = half
    early = recs[:min(len(recs), max(2, math.ceil(len(recs) / 4)))]
    if early and all(r.get(f"s_{m}") is not None for r in early for m in modalities):
        # The modality learned first: the largest Eq. 5 train score s_m (the numerator of rho > 1 in the
        # paper's Fig. 1), summed over the first quarter of the epochs (at least two: one epoch of a small
        # data set is a few steps, too few to tell).
        out["early_epochs"] = len(early)
        out["early_score"] = {m: float(sum(r[f"s_{m}"] for r in early)) for m in modalities}
        out["learned_first"] = max(modalities, key=lambda m: out["early_score"][m])
    return out


# ----------------------------------------------------------------------------- runs


def alone_config(cfg, m: str):
    """The run of modality m alone for the comparison: the fused run's data, encoder, optimiser, epochs and
    seed; one modality, so no fusion, auxiliary heads, mixing or balancing."""
    from mmvid.config import resolve_config

    d = cfg.to_dict()
    d["data"]["modalities"] = [m]
    d["model"].update({"fusion": "concat", "fusion_args": {}, "calibrate": False, "aux_loss": {}})
    d["augment"].update({"name": "none", "args": {}, "unimodal": "mask"})
    d["balance"] = {"name": "none", "args": {}}
    d["run_name"] = None
    d["monitor_train"] = True
    return resolve_config(d)


def ensure_run(cfg, cache: Path, run_dir: Path, console, what: str) -> Path:
    """Train ``run_dir`` per ``cfg``, reuse it when it finished with this config, resume it when it stopped;
    a folder trained with another config is an error naming the key (never silently overwritten)."""
    from mmvid.engine.loop import train
    from mmvid.workspace import CKPT_LAST
    from mmvid.sweeps import folder_state

    state = folder_state(run_dir, cfg)
    if state == "done":
        console.print(f"{what}: reusing {run_dir}", soft_wrap=True)
        return run_dir
    resume = state == "partial" and (run_dir / CKPT_LAST).exists()
    console.print(f"{what}: {'resuming' if resume else 'training'} {run_dir} ({cfg.epochs} epochs)", soft_wrap=True)
    train(cfg, cache, run_dir, resume=resume, progress=console.is_terminal)
    return run_dir


def config_hash(cfg) -> str:
    d = cfg.to_dict()
    for key in ("run_name", "device", "gpus"):
        d.pop(key, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def step_seconds(cfg, info, steps: int = 3) -> float:
    """Median seconds of a training step of ``cfg`` on this machine, timed on real batches after one warm-up."""
    import tempfile

    from mmvid.engine.loaders import make_loader
    from mmvid.engine.loop import build_training
    from mmvid.engine.step import train_step

    with tempfile.TemporaryDirectory() as tmp:
        parts = build_training(cfg, info, Path(tmp))
        loader = make_loader(info, parts.ctx.splits.train, cfg, train=True)
        times = []
        for k, (inputs, y) in enumerate(loader):
            t0 = time.perf_counter()
            train_step(parts, inputs, y)
            if k:
                times.append(time.perf_counter() - t0)
            if len(times) >= steps:
                break
    return float(np.median(times)) if times else 0.0


def epochs_for_budget(cfg, alone_cfgs: list, info, minutes: float, console) -> tuple[int, dict[str, Any]]:
    """The most epochs (at most ``cfg.epochs``, at least 1) for which the fused run and every alone run fit in
    ``minutes``: an epoch costs its training steps plus its evaluation passes (train monitor, val, test),
    an eval step taken as 0.35 of a training step (a forward without backward)."""
    from mmvid.engine.loaders import make_splits

    sp = make_splits(info, cfg.data.val_fraction, cfg.seed, cfg.protocol)
    bs = cfg.data.batch_size
    n_train, n_eval = len(sp.train), len(sp.train) + len(sp.val) + len(sp.test)
    per_epoch = 0.0
    timed = {}
    for c in [cfg, *alone_cfgs]:
        t = step_seconds(c, info)
        timed["+".join(c.data.modalities)] = t
        per_epoch += t * (math.ceil(n_train / bs) + 0.35 * math.ceil(n_eval / bs))
    fit = int(minutes * 60 // max(per_epoch, 1e-9))
    epochs = max(1, min(cfg.epochs, fit))
    console.print(f"budget {minutes:g} min: a training step takes "
                  + ", ".join(f"{v:.2f} s ({k})" for k, v in timed.items())
                  + f" here, so about {per_epoch:.0f} s per epoch of all runs: {epochs} epochs"
                  + (f" (the recipe has {cfg.epochs})" if epochs < cfg.epochs else ""), soft_wrap=True)
    return epochs, {"minutes": minutes, "step_seconds": timed, "epoch_seconds_estimate": per_epoch, "epochs": epochs}


# ----------------------------------------------------------------------------- the diagnosis


@dataclass
class Diagnosis:
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
    from mmvid.engine.checkpoints import model_from_checkpoint
    from mmvid.results.evaluation import load_run, method_label

    lr = load_run(run, "test", device, cache, checkpoint=checkpoint)
    run, model, cfg, info = lr.run, lr.model, lr.cfg, lr.info
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
    probes = {m: {"fused_encoder": linear_probe(passes["train"].features[m], passes["train"].labels,
                                                passes["test"].features[m], passes["test"].labels, info.num_classes)}
              for m in mods}
    if alone:
        for m in mods:
            acfg = alone_config(cfg, m)
            arun = ensure_run(acfg, info.path, out / f"alone-{m}", console, f"{m} alone")
            amodel, _, _ = model_from_checkpoint(arun / "checkpoint_last.pt")
            amodel.to(lr.device).eval()
            ap = {k: split_pass(amodel, lr.loader(rows=r), lr.device, r) for k, r in rows.items()}
            probes[m]["alone_encoder"] = linear_probe(ap["train"].features[m], ap["train"].labels,
                                                      ap["test"].features[m], ap["test"].labels, info.num_classes)
            probes[m]["alone_run"] = {k: float(ap[k].correct[frozenset({m})].mean()) for k in SPLITS}
            probes[m]["alone_epochs"] = acfg.epochs
    data["probes"] = probes
    recs = read_metrics(run, required=False)
    data["curves"] = curves(recs, mods) if recs else {}
    data["measured"] = measured(data)
    write_atomic(out / "diagnosis.json", json.dumps(data, indent=2, default=float))
    diag = Diagnosis(run, out, data, [out / "diagnosis.json"])
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


# ----------------------------------------------------------------------------- output


def render(data: dict[str, Any], console) -> None:
    from rich.markup import escape
    from rich.table import Table

    mods = data["modalities"]
    table = Table(title=f"diagnosis of {Path(data['run']).name} ({data['method']})")
    table.add_column("figure")
    for m in mods:
        for split in SPLITS:
            table.add_column(f"{m}, {split}", justify="right")
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    sh = data["shapley"]
    table.add_row("Shapley value (true-class prob.)", *[f"{sh[s]['phi'][m]:+.3f}" for m in mods for s in SPLITS])
    table.add_row("Shapley share", *[pct(sh[s]["share"][m]) for m in mods for s in SPLITS])
    table.add_row("utilisation (bounded)", *[f"{data['utilisation'][s][m]:+.2f}" for m in mods for s in SPLITS])
    table.add_row("probe on fused encoder", *[pct(data["probes"][m]["fused_encoder"][s]) for m in mods for s in SPLITS])
    if all("alone_encoder" in data["probes"][m] for m in mods):
        table.add_row("probe on alone encoder", *[pct(data["probes"][m]["alone_encoder"][s]) for m in mods for s in SPLITS])
        table.add_row("alone run", *[pct(data["probes"][m]["alone_run"][s]) for m in mods for s in SPLITS])
    console.print(table)
    for item in data["measured"]:
        methods = f" [dim]methods aimed at this: {', '.join(item['methods'])}[/]" if item.get("methods") else ""
        console.print(f"- {escape(item['text'])} [dim]({item['figure']})[/]{methods}", soft_wrap=True)


def plot_diagnosis(data: dict[str, Any], out: Path) -> list[Path]:
    """shapley_per_class, probes, memorisation and rho (PNG + SVG each); returns the PNGs."""
    from matplotlib.ticker import FuncFormatter

    from mmvid.results.figures import PANEL, _pyplot, present, save_figure

    plt = _pyplot()
    mods, names = data["modalities"], data["class_names"]
    pngs = []
    fig, axes = plt.subplots(1, 2, figsize=(max(PANEL[0] * 2, 0.5 * len(names) * len(mods) + 3), PANEL[1] + 0.8),
                             layout="constrained", sharey=True)
    width = 0.8 / len(mods)
    for ax, split in zip(axes, SPLITS):
        pc = data["shapley"][split]["per_class"]
        cls = [c for c in names if c in pc]
        x = np.arange(len(cls))
        for i, m in enumerate(mods):
            ax.bar(x + (i - (len(mods) - 1) / 2) * width, [pc[c][m] for c in cls], width, label=m, color=f"C{i}")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(x, cls, rotation=45 if len(cls) > 6 else 0, ha="right" if len(cls) > 6 else "center", fontsize=7)
        ax.set(title=f"Shapley value per class, {split}", ylabel="mean phi (true-class probability)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=8)
    pngs.append(save_figure(fig, out / "shapley_per_class")[0])

    fig, ax = plt.subplots(figsize=PANEL, layout="constrained")
    kinds = [("fused_encoder", "probe: fused run's encoder"), ("alone_encoder", "probe: alone run's encoder"),
             ("alone_run", "alone run")]
    kinds = [k for k in kinds if all(k[0] in data["probes"][m] for m in mods)]
    x = np.arange(len(mods))
    w = 0.8 / len(kinds)
    for i, (k, label) in enumerate(kinds):
        ax.bar(x + (i - (len(kinds) - 1) / 2) * w, [100 * data["probes"][m][k]["test"] for m in mods], w, label=label,
               color=f"C{i + 2}")
    ax.set_xticks(x, mods)
    ax.set(title="held-out accuracy of each modality", ylabel="accuracy (%)", ylim=(0, 100))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    pngs.append(save_figure(fig, out / "probes")[0])

    c = data.get("curves") or {}
    held = c.get("held_out", "test")
    ep = c.get("epoch", [])
    fig, axes = plt.subplots(1, 2, figsize=(PANEL[0] * 2, PANEL[1]), layout="constrained")
    for i, m in enumerate(mods):
        axes[0].plot(*present(ep, c.get(f"train_acc_{m}", []), 100), "--", color=f"C{i}", label=f"{m}, train")
        axes[0].plot(*present(ep, c.get(f"{held}_acc_{m}", []), 100), "-", color=f"C{i}", label=f"{m}, {held}")
        axes[1].plot(*present(ep, c.get(f"gap_{m}", []), 100), "-", color=f"C{i}", label=m)
    axes[0].set(title="each modality alone (masking, Eq. 5)", xlabel="epoch", ylabel="accuracy (%)")
    axes[1].set(title=f"memorisation: train minus {held}", xlabel="epoch", ylabel="points")
    axes[1].axhline(0, color="k", lw=0.6)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    pngs.append(save_figure(fig, out / "memorisation")[0])

    fig, axes = plt.subplots(1, 2, figsize=(PANEL[0] * 2, PANEL[1]), layout="constrained")
    for key, style, label in (("train_rho", "-", "train"), (f"{held}_rho", ":", held)):
        vals = c.get(key, [])
        if vals:
            axes[0].plot(*present(ep, vals), style, color="k", label=f"rho, {label}")
    axes[0].axhline(1, color="grey", lw=0.6)
    axes[0].set(title="imbalance factor rho (Eq. 6)", xlabel="epoch", yscale="log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    for i, m in enumerate(mods):
        for split, style in (("train", "--"), (held, "-")):
            vals = c.get(f"{split}_utilisation_{m}")
            if vals:
                axes[1].plot(*present(ep, vals), style, color=f"C{i}", label=f"{m}, {split}")
    axes[1].set(title="conditional utilisation (bounded)", xlabel="epoch", ylim=(-1.05, 1.05))
    axes[1].axhline(0, color="k", lw=0.6)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    pngs.append(save_figure(fig, out / "rho")[0])
    return pngs


def write_html(data: dict[str, Any], figures: list[Path], path: Path) -> Path:
    """One self-contained page: the measurements, the tables and the four figures (embedded PNG)."""
    from mmvid.results.report import CSS, _esc, embed_png, html_table

    mods = data["modalities"]
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mmvid diagnosis</title><style>{CSS}</style></head><body>",
             f"<h1>Diagnosis of {_esc(Path(data['run']).name)}</h1>",
             f"<p class='muted'>{_esc(data['method'])}; cache {_esc(data['cache'])}; {_esc(data['created'])}</p>",
             "<h2>What was measured</h2><ul>"]
    for item in data["measured"]:
        meth = f" Methods aimed at this pattern: {_esc(', '.join(item['methods']))}." if item.get("methods") else ""
        parts.append(f"<li>{_esc(item['text'])} (figure: {_esc(item['figure'])}).{meth}</li>")
    parts.append("</ul><p class='muted'>Measurements, not verdicts: some imbalance can help (PDMP, ARL).</p>")
    rows = []
    for split in SPLITS:
        s = data["shapley"][split]
        rows += [[f"Shapley value, {split}", *[f"{s['phi'][m]:+.4f}" for m in mods]],
                 [f"Shapley share, {split}", *[pct(s["share"][m]) for m in mods]],
                 [f"utilisation (bounded), {split}", *[f"{data['utilisation'][split][m]:+.3f}" for m in mods]]]
    for k in ("fused_encoder", "alone_encoder", "alone_run"):
        if all(k in data["probes"][m] for m in mods):
            rows.append([f"{k.replace('_', ' ')} (held out)", *[pct(data["probes"][m][k]["test"]) for m in mods]])
    parts.append("<h2>Summary</h2>" + html_table(["figure", *mods], rows))
    for png in figures:
        parts.append(f"<h2>{_esc(png.stem.replace('_', ' '))}</h2>" + embed_png(png, png.stem))
    dom = data["shapley"]["test"]["most_dominated_samples"]
    parts.append("<h2>Held-out samples most dominated by one modality</h2>"
                 + html_table(["modality", "sample", "class", "share"], [[d["modality"], d["name"], d["class"], pct(d["share"])] for d in dom]))
    parts.append("</body></html>")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- the command


def run_diagnose(console, ws: Path, run: str | None = None, dataset: str | None = None, recipe: str | None = None,
                 sets: dict[str, Any] | None = None, epochs: int | None = None, minutes: float | None = None,
                 alone: bool = True, try_methods: str | None = None, seeds: int = 3, checkpoint: str = "last",
                 device: str = "auto", out: Path | None = None, cache: str | Path | None = None) -> Diagnosis:
    """``mmvid diagnose RUN`` or ``mmvid diagnose --dataset NAME``: the latter trains (or reuses) a fused
    run of ``recipe`` (default: the recipe named like the cache, e.g. ``demo``, else the defaults) for
    ``epochs`` or as many as fit in ``minutes``; then the diagnosis, then the ``try_methods`` comparison."""
    from mmvid.engine.checkpoints import check_checkpoint_choice

    check_checkpoint_choice(checkpoint)
    if (run is None) == (dataset is None):
        raise MmvidError("give a RUN to diagnose or --dataset NAME to train one (not both)")
    if dataset is not None and cache is not None:
        raise MmvidError("--cache reads a RUN's clips from another cache; with --dataset, name the cache there")
    methods = _try_methods(try_methods)
    if out is not None:  # a folder the user named: new, empty or an earlier diagnosis, checked before any work
        from mmvid.workspace import check_out_folder

        check_out_folder(out, "diagnosis.json", ("run", "shapley"))
    if minutes is not None:
        from mmvid.schema import check_option

        check_option("--minutes", minutes, float, gt=0.0, le=1e6)
    budget = None
    if dataset is not None:
        run_dir, cfg, budget = _fused_run(console, ws, dataset, recipe, sets or {}, epochs, minutes, alone)
    else:
        if recipe or sets or epochs or minutes:
            raise MmvidError("--recipe, --set, --epochs and --minutes choose the run that --dataset trains; "
                             "a RUN given is diagnosed as it was trained")
        from mmvid.results.evaluation import resolve_target

        run_dir = resolve_target(ws, run)
        cfg = None
    diag = diagnose_run(run_dir, console, out=out, checkpoint=checkpoint, alone=alone, device=device, budget=budget,
                        cache=cache)
    if methods:
        from mmvid.results.evaluation import load_run

        cfg = cfg or load_run(run_dir, "test", device, cache, checkpoint=checkpoint).cfg
        diag.data["try"] = try_comparison(console, ws, cfg, methods, seeds, diag.out / f"try-{config_hash(cfg)}")
        write_atomic(diag.out / "diagnosis.json", json.dumps(diag.data, indent=2, default=float))
    console.print(f"wrote {diag.out / 'diagnosis.json'} and {diag.out / 'diagnosis.html'}", soft_wrap=True, highlight=False)
    return diag


def _try_methods(text: str | None) -> list[str]:
    from mmvid.config import RECIPES

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
    from mmvid.config import RECIPES, resolve_config
    from mmvid.data.cache import read_info
    from mmvid.workflows import check_plugins
    from mmvid.workspace import check_run_folder, resolve_cache, run_path

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
    import yaml

    from mmvid.sweeps import sweep_command

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
        import csv

        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    return {"methods": ["plain", *methods], "seeds": seeds, "table": rows,
            "files": [str(p) for p in files]}
