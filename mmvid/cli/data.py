"""``mmvid prepare``: decode a dataset once into the HDF5 cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mmvid.cli.app import Workspace, _parse_sets, _ws, app, cli_errors, console, plugin_option


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
