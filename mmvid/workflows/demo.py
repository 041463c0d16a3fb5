"""``mmvid demo``: prepare -> train concat and concat + B-MM -> evaluate -> robustness -> figures, composed of the
same functions a user calls one by one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mmvid.workflows.prepare import run_prepare
from mmvid.workflows.train import run_train


def run_demo(console, ws: Path, epochs: int | None = None, clips: int | None = None) -> dict[str, Any]:
    """prepare demo -> train concat and concat + B-MM -> evaluate -> robustness -> figures, with a Rich summary."""
    from rich.panel import Panel
    from rich.text import Text

    from mmvid.results import figures as visualize
    from mmvid.results.evaluation import checkpoint_note, evaluate_run, render
    from mmvid.results.robustness import compare_robustness

    t0 = time.time()
    console.rule("[bold]mmvid demo: prepare")
    cache = run_prepare(console, ws, "demo", workers=2, clips=clips)
    over = {"data.dataset": cache.stem, "epochs": epochs}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs, results = {}, {}
    for aug in ("none", "bmm"):
        console.rule(f"[bold]mmvid demo: train concat + {aug}")
        runs[aug] = run_train(console, ws, "demo", {**over, "augment.name": aug, "run_name": f"demo-concat-{aug}-{stamp}"})
        results[aug] = evaluate_run(runs[aug])
    console.rule("[bold]mmvid demo: evaluate")
    render(list(results.values()), console)
    console.rule("[bold]mmvid demo: robustness (concat vs concat + B-MM)")
    rob = compare_robustness([runs["none"], runs["bmm"]], drop=["audio", "video"], fill="zero", noise="gaussian",
                             modality="audio", corruptions=["all"], severities=["medium"],
                             out_dir=ws / "comparisons" / f"demo-{stamp}", console=console)
    console.rule("[bold]mmvid demo: figures")
    figures = [p for p in rob.files if p.suffix == ".png"]
    for run in runs.values():
        figures += [p for p in visualize.plot_curves(run) + visualize.plot_umap(run, max_points=300)
                    + visualize.plot_confusion(run) if p.suffix == ".png"]
    lines = [f"concat+{k}: test accuracy {100 * r['accuracy']:.2f}% at the {checkpoint_note(r)}  ("
             + ", ".join(f"{m} alone {100 * a:.1f}%" for m, a in r["modality_accuracy"].items()) + f", rho {r['rho']:.2f})"
             for k, r in results.items()]
    # The figures the README quotes from the demo, in one file (tests/test_demo_figures.py recomputes them).
    drops = {c.modalities[0]: [rob.acc(r, c) for r in rob.runs] for c in rob.conditions if c.op == "drop"}
    figures_json = {"test_accuracy": {k: r["accuracy"] for k, r in results.items()},
                    "checkpoint": {k: checkpoint_note(r) for k, r in results.items()},
                    "without": {m: dict(zip(("none", "bmm"), accs)) for m, accs in drops.items()}}
    (rob.out_dir / "demo-figures.json").write_text(json.dumps(figures_json, indent=2))
    lines += [f"without {m}: concat {100 * a['none']:.1f}%, concat+bmm {100 * a['bmm']:.1f}%"
              for m, a in figures_json["without"].items()]
    lines.append(f"workspace: {ws}   total time {time.time() - t0:.0f}s")
    console.print(Panel(Text("\n".join(lines), overflow="fold"), title="mmvid demo summary"))
    console.print("figures:")
    for p in figures:
        console.print(f"  {p}", soft_wrap=True, highlight=False)
    return {"results": results, "runs": runs, "figures": figures}
