"""What is read from trained runs: ``mmvid evaluate``, ``robustness``, ``visualize``, ``report`` and ``diagnose``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmvid.cli.app import Cache, Device, Workspace, _parse_sets, _ws, app, cli_errors, console, plugin_option


@app.command()
@cli_errors
@plugin_option
def evaluate(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Run names, run folders or checkpoints (default: latest run).")] = None,
    workspace: Workspace = None,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    device: Device = "auto",
    cache: Cache = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON only.")] = False,
    checkpoint: Annotated[str, typer.Option(help="Of a run folder: best (the best-validation epoch, else last) | last "
                                                 "(the last epoch). A checkpoint file given is used as it is.")] = "best",
):
    """Accuracy, macro-F1, per-class accuracy, confusion matrix, per-modality accuracy (masking) and rho
    of one or more runs, side by side, each saying which checkpoint (best or last, its epoch) it comes
    from; each run's metrics also go to [dim]<run>/eval_<split>.json[/] ([dim]eval_<split>_last.json[/] for last).

    Examples:
      mmvid evaluate
      mmvid evaluate concat-run bmm-run --split test
      mmvid evaluate my-run --checkpoint last
      mmvid evaluate runs/my-run/checkpoint_last.pt
    """
    import json

    from mmvid import api
    from mmvid.engine.checkpoints import check_checkpoint_choice
    from mmvid.results.evaluation import eval_path, render, resolve_target
    from mmvid.runfiles import check_run

    check_checkpoint_choice(checkpoint)  # a bad value fails here, before any run is loaded
    ws = _ws(workspace)
    targets = [resolve_target(ws, r) for r in (runs or [None])]
    for t in targets:  # every run's files before any model is loaded
        check_run(t.parent if t.is_file() else t)
    results = [api.evaluate(t, workspace=ws, split=split, checkpoint=checkpoint, device=device, cache=cache,
                            console=None if json_ else console, quiet=json_) for t in targets]
    if json_:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    render(results, console)
    for r in results:
        console.print(f"wrote {eval_path(r)}", soft_wrap=True, highlight=False)


@app.command()
@cli_errors
@plugin_option
def robustness(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to compare (default: latest run).")] = None,
    workspace: Workspace = None,
    drop: Annotated[Optional[list[str]], typer.Option(help="Remove a modality: audio | video | flow (repeatable).")] = None,
    fill: Annotated[str, typer.Option(help="A dropped modality becomes: zero | mean (its training mean) | both.")] = "zero",
    noise: Annotated[Optional[str], typer.Option(help="Additive noise model: gaussian.")] = None,
    modality: Annotated[str, typer.Option(help="Noise on audio | video | flow, on each in turn, or on all at once.")] = "each",
    levels: Annotated[Optional[list[str]], typer.Option(help="Noise levels: SNR dB (audio), sigma (video on [0,1] pixels, flow in px/frame); "
                                                       "'20,10,0' or 'audio=20,10,0' (repeatable).")] = None,
    corruptions: Annotated[Optional[str], typer.Option(help="Comma list: blur, occlusion, audio-dropout, or all.")] = None,
    severities: Annotated[Optional[str], typer.Option(help="Named corruption severities to run (default light,medium,heavy).")] = None,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <run>/robustness, or comparisons/ for several runs).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the noise and corruptions (the same for every run).")] = 0,
    device: Device = "auto",
    cache: Cache = None,
):
    """Accuracy when a modality is missing, noisy or corrupted; several runs side by side.
    Writes robustness.csv (a row per condition), robustness.json and robustness.png/.svg.

    Examples:
      mmvid robustness --drop audio
      mmvid robustness run_concat run_bmm --drop audio --fill both
      mmvid robustness run_concat run_bmm --noise gaussian --modality audio --levels 20,10,0,-10
      mmvid robustness run_concat run_bmm --corruptions all
    """
    from mmvid import api

    api.robustness(runs or None, workspace=_ws(workspace), drop=drop, fill=fill, noise=noise, modality=modality,
                   levels=levels, corruptions=corruptions, severities=severities, split=split, out=out, seed=seed,
                   device=device, cache=cache, console=console)


@app.command()
@cli_errors
@plugin_option
def visualize(
    kind: Annotated[str, typer.Argument(help="curves | umap | confusion.")],
    run: Annotated[Optional[str], typer.Argument(help="Run name or folder (default: latest run).")] = None,
    workspace: Workspace = None,
    split: Annotated[str, typer.Option(help="confusion: test | val | train.")] = "test",
    max_points: Annotated[int, typer.Option(min=4, help="umap: at most this many clips per split (balanced over classes).")] = 500,
    seed: Annotated[int, typer.Option(help="umap: seed of the subsample and of UMAP.")] = 0,
    out: Annotated[Optional[Path], typer.Option(help="Output path without suffix (default <run>/figures/<kind>).")] = None,
    device: Device = "auto",
    cache: Cache = None,
):
    """Figures of a run as PNG and SVG (headless); prints each path.

    curves: fused and per-modality train/test accuracy over epochs, rho and lambda (paper Fig. 1).
    umap: audio, video and fused features on train and test, coloured by class (paper Figs. 4-5).
    confusion: confusion matrices of the fused model and of each modality alone.

    Examples:
      mmvid visualize curves
      mmvid visualize umap my-run --max-points 300
      mmvid visualize confusion my-run --split test
    """
    from mmvid import api

    for path in api.visualize(kind, run, workspace=_ws(workspace), split=split, max_points=max_points, seed=seed,
                              out=out, device=device, cache=cache, console=console):
        console.print(f"wrote {path}", soft_wrap=True, highlight=False)


@app.command()
@cli_errors
@plugin_option
def report(
    run: Annotated[Optional[str], typer.Argument(help="Run name or folder (default: latest run).")] = None,
    workspace: Workspace = None,
    umap: Annotated[bool, typer.Option("--umap/--no-umap", help="Include the UMAP figure (the slowest part).")] = True,
    robustness: Annotated[bool, typer.Option("--robustness/--no-robustness", help="Run a missing-modality check if none is saved.")] = True,
    out: Annotated[Optional[Path], typer.Option(help="HTML file (default <run>/report.html).")] = None,
    device: Device = "auto",
    cache: Cache = None,
):
    """One self-contained HTML page of a run: config, metrics tables and figures (embedded), to open or share.

    Examples:
      mmvid report
      mmvid report my-run --no-umap
    """
    from mmvid import api

    path = api.report(run, workspace=_ws(workspace), umap=umap, robustness=robustness, out=out, device=device,
                      cache=cache, console=console)
    console.print(f"wrote {path}", soft_wrap=True, highlight=False)


@app.command()
@cli_errors
@plugin_option
def diagnose(
    run: Annotated[Optional[str], typer.Argument(help="A trained run (name or folder) to diagnose.")] = None,
    workspace: Workspace = None,
    dataset: Annotated[Optional[str], typer.Option(help="Train the short runs needed on this cache instead of giving a RUN.")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="With --dataset: the recipe of the fused run (default: the one named like the cache, else the defaults).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="With --dataset: a config key, e.g. --set model.fusion=sum.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="With --dataset: epochs of the fused and alone runs.")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="With --dataset: as many epochs (up to the recipe's) as fit this budget, timed here.")] = None,
    alone: Annotated[bool, typer.Option("--alone/--no-alone", help="Train one run per modality alone (same epochs) to compare the probes with.")] = True,
    try_: Annotated[Optional[str], typer.Option("--try", help="Compare these methods after the diagnosis, e.g. bmm,ogm-ge,mmpareto (a sweep).")] = None,
    seeds: Annotated[int, typer.Option(help="Seeds per method for --try.")] = 3,
    checkpoint: Annotated[str, typer.Option(help="last (default: the alone runs have the same epochs) | best.")] = "last",
    device: Device = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default <run>/diagnosis).")] = None,
    cache: Cache = None,
):
    """Measure modality imbalance: exact Shapley values of the modalities (per class and sample), linear
    probes of each encoder against the modality trained alone, memorisation and rho over epochs, the
    bounded conditional utilisation rate; a summary, [dim]diagnosis.json[/] and [dim]diagnosis.html[/].

    Examples:
      mmvid diagnose my-run
      mmvid diagnose --dataset demo --minutes 5
      mmvid diagnose --dataset folder --recipe cremad --epochs 10 --try bmm,ogm-ge,mmpareto --seeds 3
    """
    from mmvid import api

    api.diagnose(run, workspace=_ws(workspace), dataset=dataset, recipe=recipe, epochs=epochs, minutes=minutes,
                 alone=alone, try_methods=try_, seeds=seeds, checkpoint=checkpoint, device=device, out=out, cache=cache,
                 console=console, **_parse_sets(set_))
