"""``mmvid prepare``: check the options, prepare (or merge, or describe) the cache, report what was done with Rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError

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
    from mmvid.schema import check_name, check_option

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
