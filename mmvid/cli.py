"""The ``mmvid`` command line: thin commands that parse, validate and call library code.

Heavy imports (torch, h5py, librosa) happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(
    name="mmvid",
    help="Multimodal video classification with Multimodal Mixup (MM) and Balanced MM (B-MM).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
console = Console()
err_console = Console(stderr=True)

Workspace = Annotated[Optional[Path], typer.Option("--workspace", "-w", envvar="MMVID_HOME",
                                                   help="Workspace folder with caches/ and runs/ (default ./mmvid-workspace).")]


def cli_errors(fn):
    """Render MmvidError (and Ctrl-C) as one clear line and a non-zero exit, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmvid.errors import MmvidError

        try:
            return fn(*args, **kwargs)
        except MmvidError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


def _ws(workspace: Optional[Path]) -> Path:
    from mmvid.workspace import workspace_dir

    return workspace_dir(workspace)


def _parse_sets(items: list[str] | None) -> dict[str, str]:
    from mmvid.errors import MmvidError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise MmvidError(f"--set {item!r} must look like key=value, e.g. --set optim.lr=3e-4")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ----------------------------------------------------------------------------- prepare


@app.command()
@cli_errors
def prepare(
    dataset: Annotated[str, typer.Argument(help="demo | cremad | kinetics-sounds | ucf101 | folder")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root folder in its official layout.")] = None,
    workspace: Workspace = None,
    name: Annotated[Optional[str], typer.Option(help="Cache name (default: the dataset name).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Parallel decoding processes.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache from scratch.")] = False,
    info: Annotated[bool, typer.Option("--info", help="Only print what an existing cache holds and verify it.")] = False,
    split: Annotated[Optional[str], typer.Option(help="UCF-101 split 1|2|3.")] = None,
    train_list: Annotated[Optional[Path], typer.Option(help="Train split list (dataset's own format).")] = None,
    test_list: Annotated[Optional[Path], typer.Option(help="Test split list (dataset's own format).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames per clip T.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Resample frames to this rate before picking T (0 = native).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Stored frame size (square).")] = None,
    sample_rate: Annotated[Optional[int], typer.Option(help="Audio sample rate in Hz.")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Audio length in seconds (tiled or padded).")] = None,
    flow: Annotated[Optional[str], typer.Option(help="Optical flow: none | precomputed | farneback | dis.")] = None,
    missing_audio: Annotated[Optional[str], typer.Option(help="Clips without audio: skip | zeros.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of generated splits (and of the demo).")] = 0,
    clips: Annotated[Optional[int], typer.Option(help="Demo only: number of clips to generate.")] = None,
):
    """Decode a dataset once into the HDF5 cache [dim](<workspace>/caches/<name>.h5)[/].

    Examples:
      mmvid prepare demo
      mmvid prepare cremad --root /data/CREMA-D --workers 8
      mmvid prepare ucf101 --root /data/UCF101 --split 1 --flow precomputed
      mmvid prepare cremad --info
    """
    from mmvid.workflows import run_prepare

    run_prepare(console, _ws(workspace), dataset, root=root, name=name, workers=workers, force=force, info=info,
                split=split, train_list=train_list, test_list=test_list, seed=seed, clips=clips,
                params={"num_frames": frames, "fps": fps, "image_size": image_size, "sample_rate": sample_rate,
                        "clip_seconds": clip_seconds, "flow": flow, "missing_audio": missing_audio})


# ----------------------------------------------------------------------------- train


@app.command()
@cli_errors
def train(
    workspace: Workspace = None,
    recipe: Annotated[Optional[str], typer.Option(help="YAML recipe: a path or a name in recipes/ (e.g. demo, cremad).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Cache name (default: the only or latest prepared).")] = None,
    fusion: Annotated[Optional[str], typer.Option(help="Fusion strategy (see --list).")] = None,
    aug: Annotated[Optional[str], typer.Option(help="Augmentation: none | mixup | mm | bmm | ... (see --list).")] = None,
    balance: Annotated[Optional[str], typer.Option(help="Balancing method (see --list).")] = None,
    calibrate: Annotated[Optional[bool], typer.Option("--calibrate/--no-calibrate", help="Pre-fusion calibration module.")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="resnet18 | small.")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Batch size per process.")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto | cpu | cuda.")] = None,
    amp: Annotated[Optional[str], typer.Option(help="off | bf16 | fp16.")] = None,
    gpus: Annotated[Optional[int], typer.Option(help="Processes (DDP); without a GPU, CPU processes with gloo.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="DataLoader workers.")] = None,
    cache_in_memory: Annotated[Optional[bool], typer.Option("--cache-in-memory/--no-cache-in-memory", help="Read the whole cache into RAM first.")] = None,
    cache_on_gpu: Annotated[Optional[bool], typer.Option("--cache-on-gpu/--no-cache-on-gpu", help="Serve the whole cache from tensors on the device.")] = None,
    run_name: Annotated[Optional[str], typer.Option(help="Run folder name under runs/.")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue an interrupted run (name or folder).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config key, e.g. --set augment.beta=0.5.")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List registered fusions, augmentations and balancers.")] = False,
):
    """Train a model on a prepared cache; writes [dim]runs/<run-name>/[/] (config, metrics.jsonl, checkpoints).

    Precedence: dataclass defaults < --recipe < flags < --set.

    Examples:
      mmvid train --recipe demo --aug bmm
      mmvid train --fusion concat --aug bmm --gpus 2
      torchrun --nnodes 2 --nproc-per-node 8 -m mmvid.cli train --recipe cremad --amp bf16
      mmvid train --list
    """
    from mmvid.workflows import list_plugins, run_train

    if list_:
        list_plugins(console)
        return
    overrides = {
        "data.dataset": dataset, "model.fusion": fusion, "augment.name": aug, "balance.name": balance,
        "model.calibrate": calibrate, "model.encoder": encoder, "epochs": epochs, "data.batch_size": batch_size,
        "optim.lr": lr, "seed": seed, "device": device, "amp": amp, "gpus": gpus, "data.workers": workers,
        "run_name": run_name, "data.cache_in_memory": cache_in_memory, "data.cache_on_gpu": cache_on_gpu,
    }
    overrides.update(_parse_sets(set_))
    run_train(console, _ws(workspace), recipe, overrides, resume)


# ----------------------------------------------------------------------------- evaluate


@app.command()
@cli_errors
def evaluate(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Run names, run folders or checkpoints (default: latest run).")] = None,
    workspace: Workspace = None,
    split: Annotated[str, typer.Option(help="test | val | train.")] = "test",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
    json_: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON only.")] = False,
):
    """Accuracy, macro-F1, per-class and per-modality accuracy and rho of one or more runs.

    Examples:
      mmvid evaluate
      mmvid evaluate concat-run bmm-run --split test
    """
    import json

    from mmvid.evaluate import evaluate_run, render
    from mmvid.workspace import resolve_run

    ws = _ws(workspace)
    results = [evaluate_run(resolve_run(ws, r), split, device) for r in (runs or [None])]
    if json_:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return
    render(results, console)
    console.print_json(data=[{k: r[k] for k in ("run", "split", "accuracy", "macro_f1", "modality_accuracy", "rho")} for r in results])


# ----------------------------------------------------------------------------- robustness


@app.command()
@cli_errors
def robustness(
    runs: Annotated[Optional[list[str]], typer.Argument(help="Runs to compare (default: latest run).")] = None,
    workspace: Workspace = None,
    drop: Annotated[Optional[str], typer.Option(help="Remove a modality: audio | video | flow.")] = None,
    fill: Annotated[str, typer.Option(help="How a dropped modality is replaced: zero | mean (training mean).")] = "zero",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda.")] = "auto",
):
    """Accuracy when a modality is missing.

    Examples:
      mmvid robustness --drop audio
      mmvid robustness run_concat run_bmm --drop audio --fill mean
    """
    from rich.table import Table

    from mmvid.errors import MmvidError
    from mmvid.robustness import drop_modality
    from mmvid.workspace import resolve_run

    if drop is None:
        raise MmvidError("say what to test, e.g. --drop audio")
    ws = _ws(workspace)
    table = Table(title=f"robustness: drop {drop} ({fill})")
    for col in ("run", "clean acc", "acc", "change"):
        table.add_column(col, justify="right" if col != "run" else "left")
    for r in runs or [None]:
        res = drop_modality(resolve_run(ws, r), drop, fill, device=device)
        table.add_row(Path(res["run"]).name, f"{100 * res['clean_acc']:.2f}%", f"{100 * res['acc']:.2f}%",
                      f"{100 * (res['acc'] - res['clean_acc']):+.2f}")
    console.print(table)


# ----------------------------------------------------------------------------- visualize


@app.command()
@cli_errors
def visualize(
    kind: Annotated[str, typer.Argument(help="curves | umap | confusion.")],
    run: Annotated[Optional[str], typer.Argument(help="Run name or folder (default: latest run).")] = None,
    workspace: Workspace = None,
):
    """Figures of a run (PNG, headless).

    Examples:
      mmvid visualize curves
      mmvid visualize umap my-run
    """
    from mmvid.errors import MmvidError
    from mmvid.visualize import plot_curves
    from mmvid.workspace import resolve_run

    kinds = {"curves": plot_curves}
    if kind not in kinds:
        raise MmvidError(f"unknown figure {kind!r}; choose one of: {', '.join(kinds)}")
    path = kinds[kind](resolve_run(_ws(workspace), run))
    console.print(f"wrote {path}")


# ----------------------------------------------------------------------------- demo


@app.command()
@cli_errors
def demo(
    workspace: Workspace = None,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per run (default: the demo recipe's).")] = None,
    clips: Annotated[Optional[int], typer.Option(help="Number of demo clips.")] = None,
):
    """The whole pipeline on the embedded demo data set: prepare, train, evaluate.

    Example:
      mmvid demo
    """
    from mmvid.workflows import run_demo

    run_demo(console, _ws(workspace), epochs=epochs, clips=clips)


def main() -> None:  # pragma: no cover
    app(prog_name="mmvid")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
