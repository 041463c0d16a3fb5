"""``mmvid report RUN``: one self-contained HTML page (no external files: figures are embedded as
base64 PNG) with the run's config, test metrics, training history, robustness and figures."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mmvid.config import SELECTED_ON_TEST
from mmvid.engine.evaluation import best_selected_on
from mmvid.results.evaluation import checkpoint_note, evaluate_run
from mmvid.results.figures import plot_confusion, plot_curves, plot_umap
from mmvid.results.html_page import CSS, embed_png, esc, html_table
from mmvid.results.robustness import compare_robustness
from mmvid.runfiles import (
    ROBUSTNESS,
    check_run,
    damaged,
    read_config,
    read_json_object,
    read_metrics,
    read_run_info,
    read_summary,
    read_text,
    session_setup,
)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def best_epoch_words(summary: dict[str, Any]) -> str:
    """``best validation epoch 7``, or where the best epoch was chosen on test ``best-test epoch 7 (selected
    on test, as the reference code does)`` (protocol reference) or ``(no validation split)``."""
    if "best" not in summary:
        return "no summary.json: the best epoch is not known"
    epoch = summary["best"].get("epoch", -1) + 1
    if best_selected_on(summary) == "val":
        return f"best validation epoch {epoch}"
    return f"best-test epoch {epoch} ({SELECTED_ON_TEST.get(summary.get('protocol', 'clean'), SELECTED_ON_TEST['clean'])})"


def metrics_section(ev: dict[str, Any]) -> str:
    rows = [["accuracy", _pct(ev["accuracy"])], ["macro-F1", f"{100 * ev['macro_f1']:.2f}"],
            ["loss", f"{ev['loss']:.4f}"]]
    rows += [[f"{m} alone (masking, Eq. 5)", _pct(a)] for m, a in ev["modality_accuracy"].items()]
    rows.append(["rho (Eq. 6)", "-" if ev["rho"] is None else f"{ev['rho']:.3f}"])
    names = ev["class_names"]
    per_class = html_table(["class", "accuracy", "clips"],
                           [[c, _pct(ev["per_class_accuracy"][c]), sum(row)] for c, row in zip(names, ev["confusion"])])
    cm = html_table(["true \\ predicted", *names], [[c, *row] for c, row in zip(names, ev["confusion"])])
    return (f"<p>{ev['split']} split, {ev['n']} clips, {esc(checkpoint_note(ev))}.</p>"
            + html_table(["metric", "value"], rows) + "<h3>Per class</h3>" + per_class
            + "<h3>Confusion matrix (fused)</h3>" + cm)


def history_section(recs: list[dict[str, Any]], modalities: list[str]) -> str:
    cols = ["train_loss", "train_acc", "val_acc", "test_acc", *[f"test_acc_{m}" for m in modalities], "rho",
            *[f"lambda_{m}" for m in modalities]]
    cols = [c for c in cols if any(c in r for r in recs)]

    def cell(r: dict, c: str) -> str:
        v = r.get(c)
        if v is None:
            return "-"
        return f"{100 * v:.1f}%" if "_acc" in c else f"{v:.3f}"

    return html_table(["epoch", *cols], [[r["epoch"] + 1, *[cell(r, c) for c in cols]] for r in recs])


def robustness_section(rob: dict[str, Any]) -> str:
    labels = rob["labels"]
    rows = [["clean", *[_pct(r["clean_acc"]) for r in rob["runs"]]]]
    for c in rob["conditions"]:
        rows.append([c["name"], *[_pct(None if r["results"][c["name"]] is None else r["results"][c["name"]]["acc"])
                                  for r in rob["runs"]]])
    return html_table(["condition", *labels], rows)


def robustness_html(path: Path) -> str:
    """The robustness section from a saved ``robustness.json`` (and its PNG beside it); a file without the
    layout ``mmvid robustness`` writes is one line naming it."""
    rob = read_json_object(path)
    try:
        html_ = "<h2>Robustness</h2>" + robustness_section(rob)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        raise damaged(path, "not the layout `mmvid robustness` writes") from None
    png = path.with_suffix(".png")
    return html_ + (embed_png(png, "robustness") if png.exists() else "")


def setup_section(run: Path) -> str:
    """What the run was trained on (run.json), one row per training session."""
    info = read_run_info(run)
    if info is None:
        return "<p class='muted'>No run.json: the run was trained before mmvid recorded its setup.</p>"
    rows = [[e.get("started", ""), "resumed" if e.get("resumed") else "start", e.get("start_epoch", 0) + 1,
             session_setup(e), e.get("host", ""), " ".join(map(str, e.get("argv", [])))] for e in info["sessions"]]
    return html_table(["started", "session", "from epoch", "setup", "host", "command"], rows)


def write_report(run: Path, out: Path | None = None, umap: bool = True, robustness: bool = True, device: str = "auto",
                 console=None, max_points: int = 500, cache: str | Path | None = None) -> Path:
    """Evaluate ``run`` on test, draw its figures (curves, confusion, optionally UMAP), reuse or run a
    missing-modality robustness check, and write everything into one HTML file; returns its path.
    ``cache``: read the clips from this cache instead of the run's own (mmvid.runfiles.resolve_run_cache)."""
    run = Path(run)
    cfg = read_config(run)  # also: not a run folder (no config.yaml) is one line
    check_run(run)  # every small file of the run, before any evaluation
    rob_json = run / "robustness" / ROBUSTNESS
    rob_html = robustness_html(rob_json) if rob_json.exists() else None
    ev = evaluate_run(run, "test", device, cache, console=console)
    modalities = cfg.data.modalities
    figures = [("Accuracy, rho and lambda over epochs (paper Fig. 1)", plot_curves(run)[0]),
               ("Confusion matrices (fused and each modality alone)", plot_confusion(run, result=ev)[0])]
    if umap:
        figures.append(("UMAP of features, train and test (paper Figs. 4-5)",
                        plot_umap(run, max_points=max_points, device=device, cache=cache)[0]))
    if robustness and rob_html is None and len(modalities) > 1:
        compare_robustness([run], drop=modalities, fill="zero", device=device, cache=cache)
        rob_html = robustness_html(rob_json)
    recs = read_metrics(run)
    summary = read_summary(run) or {}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmvid report: {esc(run.name)}</title>"
        f"<style>{CSS}</style></head><body>",
        f"<h1>mmvid report: {esc(run.name)}</h1>",
        f"<p><b>{esc(ev['method'])}</b> on <b>{esc(cfg.data.dataset)}</b> "
        f"({esc(', '.join(modalities))}), {len(recs)} epochs trained; {esc(best_epoch_words(summary))}. "
        f"<span class='muted'>Written {time.strftime('%Y-%m-%d %H:%M:%S')}.</span></p>",
        "<h2>Test metrics</h2>", metrics_section(ev),
        "<h2>Figures</h2>", *[f"<h3>{esc(t)}</h3>" + embed_png(p, t) for t, p in figures],
        rob_html or "",
        "<h2>Training history</h2>", history_section(recs, modalities),
        "<h2>Setup</h2>", setup_section(run),
        "<h2>Config</h2>", f"<pre>{esc(read_text(run / 'config.yaml'))}</pre>",
        "</body></html>",
    ]
    out = Path(out) if out else run / "report.html"
    out.write_text("\n".join(parts), encoding="utf-8")
    return out
