"""What the CLI commands do, above the library: resolve the workspace, run, and report with Rich.
The demo composes the same functions a user calls one by one."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError


# ----------------------------------------------------------------------------- prepare

# What the prepare command's own options (not cache parameters, see mmvid.data.params) accept.
PREPARE_OPTIONS: dict[str, dict[str, Any]] = {
    "seed": dict(ge=0, le=2**32 - 1),  # numpy's seed range (generated splits, demo clips)
    "clips": dict(ge=10, le=1_000_000),  # demo: at least one clip of each of its 10 classes
}


def print_cache_info(console, path: Path) -> None:
    """Counts per split and class, shapes and attributes; fails if the cache is incomplete or broken."""
    from rich.table import Table

    from mmvid.data.cache import FAILED, OK, SPLIT_NAMES, check_cache, read_info

    info = read_info(path)
    table = Table(title=f"{path.name}: {info.dataset}, {len(info.names)} clips, {int((info.status == OK).sum())} ok, "
                        f"{int((info.status == FAILED).sum())} failed")
    table.add_column("class")
    present = [s for s in SPLIT_NAMES if len(info.indices(s))]
    for s in present:
        table.add_column(s, justify="right")
    for c, cname in enumerate(info.class_names):
        table.add_row(cname, *[str(int((info.labels[info.indices(s)] == c).sum())) for s in present])
    table.add_row("[bold]total", *[f"[bold]{len(info.indices(s))}" for s in present])
    console.print(table)
    for m, shape in info.shapes.items():
        console.print(f"  {m}: per clip {shape}")
    console.print("  params: " + json.dumps(info.params, sort_keys=True))
    notes = check_cache(info)  # raises the one-line cache-damage error
    console.print(f"[green]verified[/]: schema, counts, fingerprint and every stored row of {', '.join(info.modalities)}"
                  + (" (every chunk's checksum)" if info.checksummed else ""))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)


def _as_int(value: Any) -> Any:
    """``"8"`` (as the CLI passes it) -> 8; anything else unchanged, for the check to reject."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return value


def run_prepare(console, ws: Path, dataset: str, root: Path | None = None, name: str | None = None, workers: int | str = "auto",
                force: bool = False, info: bool = False, params: dict[str, Any] | None = None, progress: bool = True,
                labels: dict[str, str] | None = None, shard: str | None = None, merge: bool = False,
                preset: str | None = None, **source_kwargs) -> Path:
    """``params`` override the source's cache parameters (None = the source's value; ``fps`` 0 = native), and
    ``preset`` (mmvid.data.sources.PRESETS: the inputs of a reference implementation) lies between the two;
    ``labels`` name the CLI flag of each (for errors). Every value is checked before any source is listed.
    ``shard`` ``"i/n"`` prepares clips i, i + n, ... into ``<name>.shard-<i>-of-<n>.h5``; ``merge`` copies
    finished shards into ``<name>.h5`` (mmvid.data.shards)."""
    from mmvid.data.params import PrepareParams
    from mmvid.schema import check_option

    from mmvid.schema import check_name

    # The cache's file name: --name, else the dataset's. A plain name, checked before anything else runs.
    cache_name = check_name("--name", name) if name is not None else check_name("dataset", dataset)
    if shard is not None and merge:
        raise MmvidError("--shard and --merge go in separate commands: prepare each shard with --shard i/n, "
                         "then merge them with --merge")
    if workers != "auto":  # a count, checked as every option is ("auto" is resolved once the clips are known)
        try:
            workers = check_option("--workers", _as_int(workers), ge=1, le=1024)
        except MmvidError as e:
            raise MmvidError(f"{e} or auto") from None
    for key, rule in PREPARE_OPTIONS.items():
        if source_kwargs.get(key) is not None:
            source_kwargs[key] = check_option(f"--{key}", source_kwargs[key], **rule)
    given = {k: v for k, v in (params or {}).items() if v is not None}
    if given.get("fps") == 0:
        given["fps"] = None
    PrepareParams.build(given, labels)  # a bad option fails here, before the source is listed or generated
    from mmvid.data import shards
    from mmvid.data.prepare import prepare
    from mmvid.data.sources import GENERATED, get_source, preset_params, write_missing_manifest
    from mmvid.workspace import cache_path

    part = shards.parse_shard(shard) if shard is not None else None
    cache = cache_path(ws, cache_name, "--name" if name is not None else "dataset")
    if part:
        cache = shards.shard_path(cache, *part)
    if info:
        print_cache_info(console, cache)
        return cache
    from mmvid.data.cache_writer import check_cache_target

    check_cache_target(cache)  # a file mmvid did not write is refused now, before any clip is generated or listed
    if merge:  # reads only the shard files: the source is not listed again
        report = shards.merge_shards(cache, given, force=force, progress=progress)
        from mmvid.data.cache import read_info

        return _prepare_summary(console, cache, report, classes=read_info(cache).num_classes, what="merged shards into")
    make_source = get_source(dataset)  # first: an unknown name is rejected before anything else
    preset_params(dataset, preset)  # an unknown preset fails before the source is listed
    generated = dataset in GENERATED
    if generated and root is None:
        root = ws / "raw" / dataset
    source_kwargs = {k: v for k, v in source_kwargs.items() if v is not None}
    if generated and "clips" in source_kwargs:
        source_kwargs["n_clips"] = source_kwargs.pop("clips")
    src = make_source(root=root, **source_kwargs)
    p = PrepareParams.build({**src.params, **preset_params(dataset, preset), **given}, labels)
    attrs = None
    if part:
        from dataclasses import asdict

        src, record = shards.select_shard(src, *part, asdict(p))
        attrs = {"shard": record}
    report = prepare(src, cache, p, workers=workers, force=force, progress=progress, attrs=attrs)
    _prepare_summary(console, cache, report, classes=len(src.class_names), shard=part)
    manifest = write_missing_manifest(src, cache)
    if manifest:
        console.print(f"[yellow]note:[/] {len(src.missing)} clips of the split lists have no video; their list lines "
                      f"are in {manifest} (a list to download)", soft_wrap=True, highlight=False)
    if part:
        console.print(f"shard {part[0]}/{part[1]}: {report.total} of {attrs['shard']['total']} clips; when all "
                      f"{part[1]} shards are done, merge them with `mmvid prepare {dataset}"
                      + (f" --name {name}" if name else "") + " --merge`", soft_wrap=True, highlight=False)
    return cache


def _prepare_summary(console, cache: Path, report, classes: int, shard: tuple[int, int] | None = None,
                     what: str = "wrote") -> Path:
    """What a prepare (or merge) did: counts, notes, skipped clips and classes that cannot be learned."""
    if report.already_complete:
        console.print(f"[green]{cache}[/] is already complete ({report.ok} clips); use --force to rebuild")
        return cache
    msg = f"[green]{what} {cache}[/]: {report.ok}/{report.total} clips ok"
    if report.skipped_done:
        msg += f" ({report.skipped_done} resumed from an earlier run)"
    console.print(msg + f" in {report.seconds:.1f}s" + (f" ({report.workers} decoder processes)" if report.workers > 1 else ""))
    from rich.markup import escape

    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
    logged = len(report.decoder_messages) + sum(1 for f in report.failed if f.get("decoder_log"))
    if logged:
        console.print(f"[yellow]note:[/] the decoders printed messages on {logged} clip{'' if logged == 1 else 's'}; they are under "
                      f"\"decoder_messages\" (clips kept) and \"decoder_log\" (clips skipped) in {cache.name}.report.json",
                      soft_wrap=True, highlight=False)
    if report.excluded:
        console.print(f"[yellow]note:[/] {len(report.excluded)} inputs were not prepared; each is named with its "
                      f"reason under \"excluded\" in {cache.name}.report.json")
    if report.failed:
        from rich.table import Table

        table = Table(title=f"{len(report.failed)} clips skipped (details in {cache.name}.report.json)")
        table.add_column("clip")
        table.add_column("problem")
        for f in report.failed[:20]:
            table.add_row(escape(f["name"]), escape(f["error"]))
        console.print(table)
    empty = [] if shard else report.empty_classes  # a shard holds some classes' clips only: the merge warns
    if empty:
        named = "; ".join(f"{e['name']}: {e['reason']}" for e in empty[:5]) + ("; ..." if len(empty) > 5 else "")
        console.print(f"[bold yellow]warning:[/] {len(empty)} of {classes} classes have no usable "
                      f"training clip and cannot be learned ({escape(named)}); they keep their label. Add or fix "
                      f"their clips and re-run with --force (\"empty_classes\" in {cache.name}.report.json)")
    return cache


# ----------------------------------------------------------------------------- train


def list_plugins(console, name: str | None = None) -> None:
    """Every registered plug-in with its settings' names (``mmvid train --list``), or, with ``name``, that
    plug-in's settings: config key, default, valid values, meaning and where the reference sets it."""
    import difflib

    from rich.markup import escape
    from rich.table import Table

    from mmvid.registry import REGISTRIES, settings_table
    from mmvid.plugins import load_plugins

    load_plugins()
    if name is None:
        for reg in REGISTRIES:
            table = Table(title=f"{reg.kind}s ({len(reg)}; settings under {reg.args_key})", show_header=False)
            for n, doc in reg.describe().items():
                keys = ", ".join(row["key"] for row in settings_table(reg, n)) or "-"
                table.add_row(f"[bold]{n}", escape(doc), escape(keys))
            console.print(table)
        console.print("`mmvid train --list NAME` shows NAME's settings", highlight=False)
        return
    found = [reg for reg in REGISTRIES if name in reg]
    if not found:
        every = sorted({n for reg in REGISTRIES for n in reg.names()})
        close = difflib.get_close_matches(name, every, n=1)
        raise MmvidError(f"no plug-in named {name!r}{f'; did you mean {close[0]}?' if close else ''} "
                         f"(plug-ins: {', '.join(every)})")
    for reg in found:
        rows = settings_table(reg, name)
        title = f"{reg.kind} {name}: {reg.describe()[name]}"
        if not rows:
            console.print(f"{escape(title)}\n  no settings", highlight=False)
            continue
        # The key column never wraps (a key is typed as shown); the section it lives under is in the title.
        table = Table(title=escape(f"{title}\nsettings under {reg.args_key} (--set {reg.args_key}.KEY=VALUE)"),
                      title_justify="left")
        table.add_column(f"{reg.args_key}.", no_wrap=True)
        for col in ("default", "valid values", "meaning", "reference"):
            table.add_column(col, overflow="fold")
        for row in rows:
            table.add_row(f"[bold]{row['key']}", escape(row["default"]), escape(row["valid"]),
                          escape(row["help"]), escape(row["ref"]))
        console.print(table)


def run_train(console, ws: Path, recipe: str | None, overrides: dict[str, Any], resume: str | None = None,
              progress: bool = True, sources: dict[str, str] | None = None) -> Path:
    """``sources`` name the CLI flag of each override (for errors). The config is resolved and checked
    before torch is imported, so a bad option fails in well under a second."""
    from mmvid.config import config_from_dict, resolve_config

    notes: list[str] = []
    cfg = None if resume is not None else resolve_config(recipe, overrides, sources, notes)  # "" is refused by resolve_run
    from mmvid.data.cache_lookup import resolve_cache
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.engine.checks import check_plugins, plugin_entries
    from mmvid.engine.loop import default_run_name, train
    from mmvid.workspace import CKPT_LAST
    from mmvid.plugins import load_plugins
    from mmvid.workspace import check_run_folder, resolve_run, run_path

    load_plugins()
    # Under torchrun every rank runs this; rank 0 checks the run folder (the others would race with its first files).
    other_rank = int(os.environ.get("RANK", "0") or 0) > 0
    if resume is not None:
        from mmvid.runfiles import check_run, read_config, resolve_run_cache, workspace_of

        run_dir = resolve_run(ws, resume)
        if not other_rank:  # before its files are read or replaced
            check_run_folder(run_dir, "resume a run that `mmvid train` started")
        check_run(run_dir)  # every small file of the run, before anything is loaded or moved
        if not (run_dir / CKPT_LAST).exists() and (run_dir / "config.yaml").exists():
            # Stopped (kill -9, power loss) before its first checkpoint, or its checkpoints were removed:
            # nothing to continue but its config.
            cfg = read_config(run_dir)
            done = finished_without_checkpoint(run_dir, cfg.epochs)
            if done:
                console.print(done, soft_wrap=True, highlight=False)
                return run_dir
            home = workspace_of(run_dir) or ws
            cache = resolve_cache(home, cfg.data.dataset)
            # One process moves the files (under torchrun every rank runs this; rank 0 writes the run).
            aside = set_aside(run_dir) if os.environ.get("RANK", "0") == "0" else (None, [])
            console.print(restart_message(run_dir, aside), soft_wrap=True, highlight=False)
            console.print(f"cache of {run_dir.name}: {cache} (its config's data.dataset, in the workspace {home})",
                          soft_wrap=True, highlight=False)
        else:
            ck = load_checkpoint(run_dir / CKPT_LAST)
            cfg = config_from_dict(ck["config"])
            found = resolve_run_cache(run_dir, ck)
            cache = found.path
            console.print(found.line(run_dir), soft_wrap=True, highlight=False)
            console.print(resume_message(run_dir.name, ck, cfg.epochs) + redone_note(run_dir, ck), soft_wrap=True)
    else:
        check_plugins(cfg, console)
        for note in notes:
            console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
        cache = resolve_cache(ws, cfg.data.dataset)
        cfg.data.dataset = cache.stem
        run_dir = run_path(ws, cfg.run_name or default_run_name(cfg, cache.stem))
        if not other_rank:
            check_run_folder(run_dir)
        if (run_dir / CKPT_LAST).exists():
            raise MmvidError(f"run {run_dir.name} already exists; continue it with --resume {run_dir.name} or pick another --run-name")
    from mmvid.distributed.launch import launch, under_torchrun

    if cfg.gpus > 1 and not under_torchrun():  # spawned ranks import mmvid's plug-ins and the --plugin ones only
        from mmvid.plugins import check_reachable

        check_reachable(plugin_entries(cfg), f"the {cfg.gpus} processes of gpus={cfg.gpus}")
    if cfg.gpus > 1 or under_torchrun():
        summary = launch(cfg, cache, run_dir, resume=bool(resume), progress=progress)
        if summary is None:  # a torchrun rank other than 0: rank 0 reports
            return run_dir
        run_dir = Path(summary["run_dir"])
    else:
        summary = train(cfg, cache, run_dir, resume=bool(resume), progress=progress)
    console.print(f"[green]run {run_dir.name}[/]: {checkpoints_line(summary)} -> {run_dir}", soft_wrap=True)
    return run_dir


def checkpoints_line(summary: dict[str, Any]) -> str:
    """Test accuracy at the last epoch (checkpoint_last.pt) and at the best epoch (checkpoint_best.pt, what
    `mmvid evaluate` reads by default), each with its 1-based epoch. The best epoch is chosen on validation;
    where it was chosen on test (protocol reference, or no validation split) the line says so and why."""
    from mmvid.config import SELECTED_ON_TEST
    from mmvid.engine.evaluation import best_selected_on

    last, best = summary["last"], summary["best"]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}%"  # noqa: E731
    head = f"test acc {pct(last.get('test_acc'))} at the last epoch ({last.get('epoch', -1) + 1})"
    on_val = best_selected_on(summary) == "val"
    what = "best-validation epoch" if on_val else "best-test epoch"
    protocol = summary.get("protocol", "clean")
    sel = f"val {pct(best['val_acc'])}" if on_val else SELECTED_ON_TEST.get(protocol, SELECTED_ON_TEST["clean"])
    if best["epoch"] == last.get("epoch"):
        return f"{head}, which is also the {what} ({sel})"
    return f"{head}; {pct(best.get('test_acc'))} at the {what} ({best['epoch'] + 1}, {sel})"




def finished_without_checkpoint(run_dir: Path, epochs: int) -> str | None:
    """The line for a run that finished all ``epochs`` and then lost its checkpoint_last.pt (``mmvid sweep
    --keep best|metrics`` removes it): nothing to train, nothing to discard. None for any other run."""
    from mmvid.runfiles import read_metrics, read_summary

    summary, recs = read_summary(run_dir), read_metrics(run_dir, required=False)
    if summary is None or summary["epochs"] != epochs or not recs or recs[-1]["epoch"] + 1 < epochs:
        return None
    return (f"{run_dir.name} has finished all {epochs} epochs (its summary.json and metrics.jsonl say so; "
            f"checkpoint_last.pt was removed); nothing left to train")


# What a restart from the beginning would overwrite: kept aside in <run>/discarded[-k]/, never deleted.
RESTART_DISCARDS = ("metrics.jsonl", "summary.json", "checkpoint_best.pt")


def set_aside(run_dir: Path) -> tuple[Path | None, list[str]]:
    """Move the files a restart of ``run_dir`` from its first epoch would overwrite into a fresh
    ``<run>/discarded`` (``discarded-2``, ...) folder; returns that folder and what moved, as words
    (metrics.jsonl with its number of logged epochs)."""
    from mmvid.runfiles import read_metrics

    present = [n for n in RESTART_DISCARDS if (run_dir / n).exists()]
    if not present:
        return None, []
    words = []
    for n in present:
        if n == "metrics.jsonl":
            k = len(read_metrics(run_dir, required=False))
            words.append(f"metrics.jsonl ({k} logged epoch{'' if k == 1 else 's'})")
        else:
            words.append(n)
    folder = next(run_dir / name for name in ("discarded", *(f"discarded-{k}" for k in range(2, 10_000)))
                  if not (run_dir / name).exists())
    folder.mkdir()
    for n in present:
        (run_dir / n).rename(folder / n)
    return folder, words


def restart_message(run_dir: Path, aside: tuple[Path | None, list[str]]) -> str:
    """What a ``--resume`` without a checkpoint does: restart, and which files it kept aside where."""
    folder, words = aside
    if folder is None:
        return (f"{run_dir.name} has no checkpoint yet (it stopped during its first epoch); "
                f"restarting it from the beginning with its saved config.yaml")
    return (f"{run_dir.name} has no checkpoint_last.pt to continue from; restarting it from the beginning with its "
            f"saved config.yaml; what it had is discarded from the run and kept aside in {folder}: {', '.join(words)}")


def redone_note(run_dir: Path, ck: dict[str, Any]) -> str:
    """``; ...`` when metrics.jsonl logged epochs after the checkpoint (killed between an epoch's line and its
    checkpoint): mmvid.engine.loop.train drops those lines, and the resume says so."""
    from mmvid.runfiles import read_metrics

    later = [r["epoch"] + 1 for r in read_metrics(run_dir, required=False) if r["epoch"] > int(ck["epoch"])]
    if not later:
        return ""
    which = ", ".join(map(str, later))
    return (f"; metrics.jsonl logged epoch{'' if len(later) == 1 else 's'} {which} after that checkpoint: "
            f"{'its line is' if len(later) == 1 else 'their lines are'} dropped, as training goes on from the checkpoint")



def resume_message(name: str, ck: dict[str, Any], epochs: int) -> str:
    """Where a resumed run continues: the epoch and the step inside it (1-based), from the checkpoint's
    last finished epoch (0-based ``epoch``, -1 for none) and the position saved by Ctrl-C (``partial``)."""
    epoch, batch = int(ck["epoch"]) + 2, int((ck.get("partial") or {}).get("batch", 0))
    if epoch > epochs and not batch:
        return f"{name} has finished all {epochs} epochs; nothing left to train"
    where = f"in epoch {epoch} of {epochs} at its step {batch + 1}" if batch else f"at the start of epoch {epoch} of {epochs}"
    steps = int(ck.get("step", 0))
    return f"resuming {name} {where} ({steps} optimizer step{'' if steps == 1 else 's'} done so far)"


# ----------------------------------------------------------------------------- demo


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
