"""The ``mmvid`` command line: thin commands that parse, validate and call library code.

Heavy imports (torch, h5py, librosa) happen inside the commands so that ``--help`` is fast.
"""

from __future__ import annotations

import functools
import inspect
import os
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
            try:
                return fn(*args, **kwargs)
            except OSError as e:  # a place mmvid cannot write to (read-only workspace, full disk): name it
                if e.filename is None:
                    raise
                from mmvid.workspace import unwritable

                raise unwritable(e) from None
        except MmvidError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


PLUGIN_HELP = ("A plug-in of your own: a Python file or module that registers a data source, fusion, augmentation or balancer "
               "(repeatable). A run records it; loading that run needs it given again.")


def plugin_option(fn):
    """Adds ``--plugin FILE_OR_MODULE`` (repeatable) to a command: the plug-ins are imported (at the user's
    request, mmvid.plugins.use) before the command runs, and in every process it starts."""
    sig = inspect.signature(fn, eval_str=True)  # typer reads __signature__ as it is: no string annotations
    param = inspect.Parameter("plugin", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation=Annotated[Optional[list[str]], typer.Option("--plugin", help=PLUGIN_HELP)])
    params = list(sig.parameters.values())
    at = next((i for i, p in enumerate(params) if p.name == "workspace"), len(params) - 1) + 1
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind != p.VAR_KEYWORD else p for p in params]

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from mmvid.plugins import use

        use(kwargs.pop("plugin", None) or [])
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=params[:at] + [param] + params[at:])
    return wrapper


def torchrun_rank_exit(fn):
    """Under torchrun, end the rank without interpreter finalization once the command is done (its output
    flushed): after DDP, gloo's threads outlive the process group and can abort a finalizing interpreter
    (see mmvid.distributed.launch.end_rank_process). Outside torchrun the command runs as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "RANK" not in os.environ:  # not a launched rank: skip importing torch (mmvid.distributed.launch)
            return fn(*args, **kwargs)
        from mmvid.distributed.launch import end_rank_process, under_torchrun

        if not under_torchrun():
            return fn(*args, **kwargs)
        code = 1
        try:
            fn(*args, **kwargs)
            code = 0
        except typer.Exit as e:
            code = e.exit_code
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            end_rank_process(code)

    return wrapper


def _ws(workspace: Optional[Path]) -> Path:
    from mmvid.workspace import workspace_dir

    return workspace_dir(workspace)


def _from_flags(flags: dict[str, tuple[str, object]]) -> tuple[dict[str, object], dict[str, str]]:
    """{flag: (key, value)} -> ({key: value}, {key: flag} for the flags given), so errors name the flag."""
    return dict(flags.values()), {key: flag for flag, (key, value) in flags.items() if value is not None}


def _parse_sets(items: list[str] | None, flag: str = "--set", example: str = "optim.lr=3e-4") -> dict[str, str]:
    from mmvid.errors import MmvidError

    out = {}
    for item in items or []:
        if "=" not in item:
            raise MmvidError(f"{flag} {item!r} must look like key=value, e.g. {flag} {example}")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


# ----------------------------------------------------------------------------- prepare


@app.command()
@cli_errors
@plugin_option
def prepare(
    dataset: Annotated[str, typer.Argument(help="demo | demo-shortcut | proving | cremad | kinetics-sounds | ave | vggsound | ucf101 | folder")],
    root: Annotated[Optional[Path], typer.Option(help="Dataset root folder in its official layout.")] = None,
    workspace: Workspace = None,
    name: Annotated[Optional[str], typer.Option(help="Cache name (default: the dataset name).")] = None,
    workers: Annotated[str, typer.Option(help="Parallel decoding processes, or auto: one per CPU, at most one per 25 clips (1 below 50).")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Rebuild the cache from scratch.")] = False,
    info: Annotated[bool, typer.Option("--info", help="Only print what an existing cache holds and verify it.")] = False,
    split: Annotated[Optional[str], typer.Option(help="UCF-101 split 1|2|3.")] = None,
    train_list: Annotated[Optional[Path], typer.Option(help="Train split list (dataset's own format; vggsound: its vggsound.csv).")] = None,
    test_list: Annotated[Optional[Path], typer.Option(help="Test split list (dataset's own format).")] = None,
    frames: Annotated[Optional[int], typer.Option(help="Frames per clip T.")] = None,
    fps: Annotated[Optional[float], typer.Option(help="Resample frames to this rate before picking T (0 = native).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Stored frame size: the side of a square, or the short side with --frame-size short-side.")] = None,
    sample_rate: Annotated[Optional[int], typer.Option(help="Audio sample rate in Hz.")] = None,
    clip_seconds: Annotated[Optional[float], typer.Option(help="Audio length in seconds (tiled or padded).")] = None,
    flow: Annotated[Optional[str], typer.Option(help="Optical flow: none | precomputed | farneback | dis.")] = None,
    missing_audio: Annotated[Optional[str], typer.Option(help="Clips without audio: skip | zeros.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of generated splits (and of the demo).")] = 0,
    clips: Annotated[Optional[int], typer.Option(help="Generated sets (demo, proving) only: number of clips to generate.")] = None,
    shard: Annotated[Optional[str], typer.Option(help="Prepare only shard i/n (0-based: clips i, i+n, ...) into <name>.shard-i-of-n.h5.")] = None,
    merge: Annotated[bool, typer.Option("--merge", help="Copy the finished shards into one cache <name>.h5.")] = False,
    preset: Annotated[Optional[str], typer.Option(help="The inputs of a reference: cremad mmvid|ogm-ge|remix; kinetics-sounds ogm-ge (default)|mmvid.")] = None,
    frame_size: Annotated[Optional[str], typer.Option(help="Stored frames: square | short-side (aspect --param frame_aspect=W/H, default 4/3).")] = None,
    frame_select: Annotated[Optional[str], typer.Option(help="Which 1-fps frames: uniform | ogm-ge | remix.")] = None,
    audio_feature: Annotated[Optional[str], typer.Option(help="Audio: stft (log |STFT|) | fbank (Kaldi log-mel filterbank).")] = None,
    param: Annotated[Optional[list[str]], typer.Option(help="Any prepare parameter as KEY=VALUE (repeatable), e.g. --param stft_pad=reflect.")] = None,
):
    """Decode a dataset once into the HDF5 cache [dim](<workspace>/caches/<name>.h5)[/].

    Examples:
      mmvid prepare demo
      mmvid prepare cremad --root /data/CREMA-D --workers 8
      mmvid prepare ucf101 --root /data/UCF101 --split 1 --flow precomputed
      mmvid prepare ave --root /data/AVE_Dataset
      mmvid prepare vggsound --root /data/VGGSound --train-list vggsound.csv
      mmvid prepare cremad --info
      mmvid prepare kinetics-sounds --root /data/KS --shard 3/16   (then, once all 16 are done: --merge)
      mmvid prepare cremad --root /data/CREMA-D --preset remix --name cremad-remix
    """
    from mmvid import api

    params = dict(frames=frames, fps=fps, image_size=image_size, sample_rate=sample_rate, clip_seconds=clip_seconds,
                  flow=flow, missing_audio=missing_audio, frame_size=frame_size, frame_select=frame_select,
                  audio_feature=audio_feature)
    from dataclasses import fields

    from mmvid.data.params import PrepareParams
    from mmvid.errors import MmvidError

    known = [f.name for f in fields(PrepareParams)]
    flag_of = {v: k for k, v in api.PREPARE_OPTIONS.items()}
    extra = {}  # --param KEY=VALUE
    for key, value in _parse_sets(param, "--param", "stft_pad=reflect").items():
        if key not in known:
            raise MmvidError(f"--param {key}={value}: unknown prepare parameter {key!r}; valid: {', '.join(known)}")
        if params.get(flag_of.get(key, key)) is not None:
            raise MmvidError(f"--param {key}={value} repeats a prepare option given by its own flag; give it once")
        extra[key] = value
    api.prepare(dataset, workspace=_ws(workspace), root=root, name=name, workers=workers, force=force, info=info,
                split=split, train_list=train_list, test_list=test_list, seed=seed, clips=clips, shard=shard,
                merge=merge, preset=preset, console=console, _params=extra, _cli=True, **params)


# ----------------------------------------------------------------------------- train


@app.command()
@torchrun_rank_exit
@cli_errors
@plugin_option
def train(
    workspace: Workspace = None,
    recipe: Annotated[Optional[str], typer.Option(help="YAML recipe: a path or a name in recipes/ (e.g. demo, cremad).")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Cache name (default: the only or latest prepared).")] = None,
    fusion: Annotated[Optional[str], typer.Option(help="Fusion strategy (see --list).")] = None,
    aug: Annotated[Optional[str], typer.Option(help="Augmentation: none | mixup | mm | bmm | ... (see --list).")] = None,
    balance: Annotated[Optional[str], typer.Option(help="Balancing method (see --list).")] = None,
    calibrate: Annotated[Optional[bool], typer.Option("--calibrate/--no-calibrate", help="Pre-fusion calibration module.")] = None,
    encoder: Annotated[Optional[str], typer.Option(help="Every modality's encoder: resnet18 (paper) | resnet34 | resnet50 | r3d_18 | r2plus1d_18 | mc3_18 | small | timm (see --list); one modality's: --set model.encoders.audio.name=NAME.")] = None,
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
    protocol: Annotated[Optional[str], typer.Option(help="clean (hold out a validation split, select on it) | reference (train on every training clip, select on test, as the published code).")] = None,
    resume: Annotated[Optional[str], typer.Option(help="Continue an interrupted run (name or folder).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Any config key, e.g. --set augment.args.beta=0.5 (see --list NAME).")] = None,
    list_: Annotated[bool, typer.Option("--list", help="List every plug-in (fusions, calibration, augmentations, balancers); "
                                               "--list NAME: NAME's settings.")] = False,
    name: Annotated[Optional[str], typer.Argument(help="With --list: the plug-in whose settings to show.", show_default=False)] = None,
):
    """Train a model on a prepared cache; writes [dim]runs/<run-name>/[/] (config, metrics.jsonl, checkpoints).

    Precedence: dataclass defaults < --recipe < flags < --set.

    Examples:
      mmvid train --recipe demo --aug bmm
      mmvid train --fusion concat --aug bmm --gpus 2
      torchrun --nnodes 2 --nproc-per-node 8 -m mmvid.cli train --recipe cremad --amp bf16
      mmvid train --list
      mmvid train --list ogm-ge
    """
    from mmvid import api
    from mmvid.errors import MmvidError
    from mmvid.workflows import list_plugins

    if list_:
        list_plugins(console, name)
        return
    if name is not None:
        raise MmvidError(f"unexpected argument {name!r}: `mmvid train` takes options only (--list {name} shows a plug-in's settings)")
    options = dict(dataset=dataset, fusion=fusion, aug=aug, balance=balance, calibrate=calibrate, encoder=encoder,
                   epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, amp=amp, gpus=gpus,
                   workers=workers, run_name=run_name, cache_in_memory=cache_in_memory, cache_on_gpu=cache_on_gpu,
                   protocol=protocol)
    api.train(recipe, workspace=_ws(workspace), resume=resume, console=console, _sets=_parse_sets(set_), _cli=True,
              **options)


# ----------------------------------------------------------------------------- sweep


@app.command()
@cli_errors
@plugin_option
def sweep(
    targets: Annotated[list[str], typer.Argument(help="Recipe folders or files, e.g. recipes/table1/cremad (or table1/cremad).")],
    workspace: Workspace = None,
    seeds: Annotated[int, typer.Option(help="Seeds per recipe: 0..N-1.")] = 3,
    quick: Annotated[bool, typer.Option("--quick", help="Check the machinery: every row, 2 epochs per run (or --epochs).")] = False,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs per run instead of each recipe's.")] = None,
    dataset: Annotated[Optional[str], typer.Option(help="Train every run on this cache instead of the recipe's.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="A config key for every run, e.g. --set model.encoder=small.")] = None,
    only: Annotated[Optional[str], typer.Option(help="Comma-separated patterns of recipe ids, e.g. '*concat*,*bmm'.")] = None,
    jobs: Annotated[int, typer.Option(help="Runs at once on CPU (each with cores/jobs threads).")] = 1,
    gpus: Annotated[int, typer.Option(help="Spread runs over N GPUs, one run per GPU.")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print every run's command (and which are done) and stop.")] = False,
    emit: Annotated[Optional[str], typer.Option(help="slurm: write a job-array script instead of running.")] = None,
    task: Annotated[Optional[int], typer.Option(help="Run only run K of the plan (a job-array task).")] = None,
    collect: Annotated[bool, typer.Option("--collect", help="Only write the table from the finished runs.")] = False,
    keep: Annotated[str, typer.Option(help="What a finished run keeps: all | best (drop checkpoint_last.pt) | metrics (no checkpoints).")] = "all",
    baseline: Annotated[Optional[str], typer.Option(help="Add each row's per-seed difference to this row (e.g. concat) with its 95 % CI.")] = None,
    protocol: Annotated[Optional[str], typer.Option(help="clean | reference | clean,reference (or both): every run under each (default: each recipe's own).")] = None,
):
    """Train every recipe of a table at every seed (resuming what an earlier sweep left), then write the
    table in the paper's layout: mean ± std and 95 % CI of last-epoch and best-epoch accuracy (best-validation
    under protocol clean, best-test under protocol reference, labelled so) beside the published figure
    [dim](<workspace>/sweeps/<name>/table.md, .csv, .png)[/].

    Examples:
      mmvid sweep recipes/table1/cremad --seeds 3
      mmvid sweep recipes/table2 --gpus 4
      mmvid sweep recipes/table1/cremad --dry-run
      mmvid sweep recipes/table1 --emit slurm
      mmvid sweep recipes/table1/cremad --quick --dataset demo --set model.encoder=small
      mmvid sweep recipes/table1/cremad --protocol both   (clean and reference columns beside the paper's)
    """
    from mmvid import api

    api.sweep(targets, workspace=_ws(workspace), seeds=seeds, quick=quick, epochs=epochs, dataset=dataset, only=only,
              jobs=jobs, gpus=gpus, dry_run=dry_run, emit=emit, task=task, collect=collect, keep=keep,
              baseline=baseline, protocol=protocol, console=console, **_parse_sets(set_))


# ----------------------------------------------------------------------------- evaluate

Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
Cache = Annotated[Optional[Path], typer.Option(help="Read the clips from this cache (default: the run's cache in its own "
                                                   "workspace, caches/<name>.h5, checked against the fingerprint the run recorded).")]


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


# ----------------------------------------------------------------------------- robustness


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


# ----------------------------------------------------------------------------- visualize


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


# ----------------------------------------------------------------------------- report


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


# ----------------------------------------------------------------------------- diagnose


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


def main(argv: list[str] | None = None) -> int:
    """The ``mmvid`` program: Click's own usage errors (an unknown option, ``--seed abc``) are one line
    too, like every MmvidError, instead of Typer's boxed panel."""
    # Click's exception classes by way of a public typer name (newer typer vendors click, older depends on it).
    usage_error, click_exception = typer.BadParameter.__mro__[1:3]
    try:
        code = app(args=argv, prog_name="mmvid", standalone_mode=False)
    except usage_error as e:
        hint = f"; see `{e.ctx.command_path} --help`" if getattr(e, "ctx", None) is not None else ""
        message = e.format_message().rstrip(".")
        err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
        return 2
    except click_exception as e:
        err_console.print(f"[bold red]error:[/] {e.format_message()}", highlight=False, soft_wrap=True)
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[bold red]interrupted[/]")
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
