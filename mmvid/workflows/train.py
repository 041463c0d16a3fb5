"""``mmvid train``: resolve and check the config, start or resume the run (one process, spawned ranks or torchrun),
report where it ended; ``--list`` of the plug-ins."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError


def list_plugins(console, name: str | None = None) -> None:
    """Every registered plug-in with its settings' names (``mmvid train --list``), or, with ``name``, that
    plug-in's settings: config key, default, valid values, meaning and where the reference sets it."""
    import difflib

    from rich.markup import escape
    from rich.table import Table

    from mmvid.plugins import load_plugins
    from mmvid.registry import REGISTRIES, settings_table

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
    from mmvid.config.resolve import plugin_entries
    from mmvid.data.cache_lookup import resolve_cache
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.engine.checks import check_plugins
    from mmvid.engine.loop import default_run_name, train
    from mmvid.plugins import load_plugins
    from mmvid.workspace import CKPT_LAST, check_run_folder, resolve_run, run_path

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
