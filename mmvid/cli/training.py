"""``mmvid train`` and ``mmvid sweep``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mmvid.cli.app import Workspace, _parse_sets, _ws, app, cli_errors, console, plugin_option, torchrun_rank_exit


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
    logger: Annotated[Optional[list[str]], typer.Option(help="Also log the curves to tensorboard | wandb | csv | none (repeatable).")] = None,
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
      mmvid train --recipe demo --logger tensorboard --logger csv
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
                   protocol=protocol, logger=logger or None)
    api.train(recipe, workspace=_ws(workspace), resume=resume, console=console, _sets=_parse_sets(set_), _cli=True,
              **options)


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
    logger: Annotated[Optional[list[str]], typer.Option(help="Log every run to tensorboard | wandb | csv (repeatable), grouped under the sweep.")] = None,
    grid: Annotated[Optional[list[str]], typer.Option(help="A config key and its values KEY=v1,v2,... (repeatable): every recipe at every point of the grid, each point a row.")] = None,
    slurm: Annotated[Optional[list[str]], typer.Option(help="With --emit slurm: a job-array setting KEY=VALUE (repeatable): partition, account, time, mem, cpus, gres, qos, throttle (%N), signal.")] = None,
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
      mmvid sweep recipes/table1/cremad --only concat-bmm --grid augment.beta=0.2,0.4 --grid augment.warmup=0,5
      mmvid sweep recipes/table1 --emit slurm --slurm partition=gpu --slurm time=4:00:00 --slurm throttle=8
      mmvid sweep recipes/table1/cremad --quick --dataset demo --set model.encoder=small
      mmvid sweep recipes/table1/cremad --protocol both   (clean and reference columns beside the paper's)
      mmvid sweep recipes/table1/cremad --logger wandb   (one W&B group, one TensorBoard folder per sweep)
    """
    from mmvid import api

    api.sweep(targets, workspace=_ws(workspace), seeds=seeds, quick=quick, epochs=epochs, dataset=dataset, only=only,
              jobs=jobs, gpus=gpus, dry_run=dry_run, emit=emit, task=task, collect=collect, keep=keep,
              baseline=baseline, protocol=protocol, logger=logger, console=console,
              slurm=_parse_sets(slurm, "--slurm", "partition=gpu") or None, grid=grid, **_parse_sets(set_))
