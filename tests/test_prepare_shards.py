"""Sharded prepare (`prepare --shard i/n`, then `--merge`): the merged cache equals the one made in one go,
array for array and attribute for attribute; a shard resumes on its own; a merge refuses missing,
unfinished and mismatched shards with one line; training and evaluation read the merged cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.data import prepare as prepare_mod
from mmvid.data.cache import read_info
from mmvid.data.decode import DecodeError
from mmvid.data.shards import parse_shard
from mmvid.errors import MmvidError
from mmvid.workflows import run_prepare

QUIET = Console(quiet=True)
CLIPS = 30
BROKEN = "digit6/clip0007"  # made to fail in every run: a failed clip must merge like an ok one


def _failing_process_clip(real, decoded: list[str] | None = None, stop_after: int | None = None):
    def fake(clip, p):
        if stop_after is not None and len(decoded) == stop_after:
            raise KeyboardInterrupt  # Ctrl-C while a shard decodes
        if decoded is not None:
            decoded.append(clip.name)
        if clip.name == BROKEN:
            raise DecodeError("made to fail by the test")
        return real(clip, p)
    return fake


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """A workspace with the demo prepared in one go (``one.h5``), as 3 shards (shard 1 interrupted once and
    resumed) and merged (``demo.h5``); ``decoded`` lists what each run of shard 1 decoded."""
    mp = pytest.MonkeyPatch()
    ws = tmp_path_factory.mktemp("shards")
    real = prepare_mod.process_clip
    mp.setattr(prepare_mod, "process_clip", _failing_process_clip(real))
    kw = dict(clips=CLIPS, progress=False)
    one = run_prepare(QUIET, ws, "demo", name="one", **kw)
    run_prepare(QUIET, ws, "demo", shard="0/3", **kw)
    first: list[str] = []
    mp.setattr(prepare_mod, "process_clip", _failing_process_clip(real, first, stop_after=4))
    with pytest.raises(MmvidError, match="interrupted.*re-run the same command"):
        run_prepare(QUIET, ws, "demo", shard="1/3", **kw)
    unfinished = None
    try:
        run_prepare(QUIET, ws, "demo", merge=True, progress=False)
    except MmvidError as e:
        unfinished = str(e)
    second: list[str] = []
    mp.setattr(prepare_mod, "process_clip", _failing_process_clip(real, second))
    run_prepare(QUIET, ws, "demo", shard="1/3", **kw)  # the same command again resumes
    mp.setattr(prepare_mod, "process_clip", _failing_process_clip(real))
    run_prepare(QUIET, ws, "demo", shard="2/3", **kw)
    mp.undo()
    merged = run_prepare(QUIET, ws, "demo", merge=True, progress=False)
    return dict(ws=ws, one=one, merged=merged, first=first, second=second, unfinished=unfinished)


def _attrs(f: h5py.File) -> dict:
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in f.attrs.items() if k != "created"}


def test_merged_cache_equals_the_unsharded_one(sharded):
    with h5py.File(sharded["one"]) as a, h5py.File(sharded["merged"]) as b:
        assert sorted(a) == sorted(b) == ["frames", "labels", "names", "spectrogram", "split", "status"]
        for key in a:
            x, y = a[key], b[key]
            assert (x.shape, x.dtype, x.chunks, x.fletcher32) == (y.shape, y.dtype, y.chunks, y.fletcher32), key
            assert np.array_equal(x[:], y[:]), key
        assert _attrs(a) == _attrs(b)  # params, class names, fingerprint, counts, failed names, versions
        assert json.loads(b.attrs["failed"]) == [BROKEN] and int(b.attrs["num_failed"]) == 1
        status = b["status"][:]
        assert (status == 1).sum() == CLIPS - 1
    one, merged = read_info(sharded["one"]), read_info(sharded["merged"])
    assert merged.names == one.names and merged.class_names == one.class_names and merged.params == one.params
    # the failed clip keeps its decoder error text in the merged report
    report = json.loads(Path(f"{sharded['merged']}.report.json").read_text())
    assert [(f["name"], f["error"]) for f in report["failed"]] == [(BROKEN, "made to fail by the test")]
    assert report["total"] == CLIPS and report["ok"] == CLIPS - 1


def test_shards_take_every_nth_clip_of_the_source_order(sharded):
    names = read_info(sharded["one"]).names
    caches = sharded["ws"] / "caches"
    for i in range(3):
        shard = read_info(caches / f"demo.shard-{i}-of-3.h5")
        assert shard.names == names[i::3]
        assert json.loads(shard.attrs["shard"])["index"] == i


def test_a_shard_resumes_on_its_own(sharded):
    names = read_info(sharded["one"]).names
    assert len(sharded["first"]) == 4 and sorted(sharded["first"] + sharded["second"]) == sorted(names[1::3])
    assert "not finished" in sharded["unfinished"] and "1/3" in sharded["unfinished"]
    assert "demo.shard-1-of-3.h5.partial" in sharded["unfinished"]


def test_merged_cache_verifies_trains_and_evaluates(sharded):
    from mmvid.results.evaluation import evaluate_run
    from mmvid.workflows import run_train

    ws = sharded["ws"]
    res = CliRunner().invoke(app, ["prepare", "demo", "-w", str(ws), "--info"])
    assert res.exit_code == 0 and "verified" in res.output
    run = run_train(QUIET, ws, "demo", {"epochs": 1, "data.dataset": "demo", "run_name": "merged",
                                        "data.batch_size": 8}, progress=False)
    result = evaluate_run(run)
    assert 0.0 <= result["accuracy"] <= 1.0 and result["n"] == len(read_info(sharded["merged"]).indices("test"))


def _copy_shards(sharded, dst: Path, which=(0, 1, 2)) -> Path:
    (dst / "caches").mkdir(parents=True)
    for i in which:
        for p in (sharded["ws"] / "caches").glob(f"demo.shard-{i}-of-3.h5*"):
            shutil.copy(p, dst / "caches" / p.name)
    return dst


def _refused(ws: Path, *args: str) -> str:
    res = CliRunner().invoke(app, ["prepare", "demo", "-w", str(ws), *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    line = " ".join(res.output.split())
    return line


def test_merge_refuses_missing_and_mixed_shards(sharded, tmp_path):
    ws = _copy_shards(sharded, tmp_path / "a", which=(0, 2))
    line = _refused(ws, "--merge")
    assert "missing shards 1/3" in line and "--shard i/3" in line
    assert not (ws / "caches/demo.h5").exists() and not (ws / "caches/demo.h5.partial").exists()
    (ws / "caches/demo.shard-0-of-4.h5").write_bytes(b"")
    assert "different shard counts (n = 3, 4)" in _refused(ws, "--merge")
    assert "no shards of demo" in _refused(tmp_path / "empty", "--merge")
    assert "separate commands" in _refused(ws, "--merge", "--shard", "0/3")
    assert "--merge takes the shards as they are" in _refused(_copy_shards(sharded, tmp_path / "b"), "--merge",
                                                              "--image-size", "16")


def test_merge_refuses_shards_of_other_params_or_sources(sharded, tmp_path):
    ws = _copy_shards(sharded, tmp_path / "p", which=(0, 1))
    run_prepare(QUIET, ws, "demo", clips=CLIPS, shard="2/3", progress=False, params={"num_frames": 2})
    line = _refused(ws, "--merge")
    assert "different prepare parameters" in line and "num_frames 2 vs 3" in line
    ws = _copy_shards(sharded, tmp_path / "s", which=(0, 1))
    run_prepare(QUIET, ws, "demo", clips=CLIPS, shard="2/3", progress=False, seed=1)  # another demo draw
    assert "different clip lists" in _refused(ws, "--merge")


def test_shard_option_is_checked():
    assert parse_shard("3/16") == (3, 16) and parse_shard("0/1") == (0, 1)
    for bad in ("3/3", "-1/3", "a/b", "3", "1/0"):
        with pytest.raises(MmvidError, match="--shard .*expected i/n with 0 <= i < n"):
            parse_shard(bad)


def test_more_shards_than_clips_is_refused(tmp_path):
    with pytest.raises(MmvidError, match="has only 10 clips, so shard 12 would be empty"):
        run_prepare(QUIET, tmp_path, "demo", clips=10, shard="12/16", progress=False)


def test_interrupted_merge_resumes_to_the_same_cache(sharded, tmp_path, monkeypatch):
    from mmvid.data.cache_writer import CacheWriter

    ws = _copy_shards(sharded, tmp_path / "m")
    real, written = CacheWriter.write, []

    def stop_in_second_shard(self, i, sample):
        if len(written) == CLIPS // 3 + 2:
            raise KeyboardInterrupt
        written.append(i)
        real(self, i, sample)

    monkeypatch.setattr(CacheWriter, "write", stop_in_second_shard)
    with pytest.raises(MmvidError, match="merge interrupted.*re-run the same command to resume"):
        run_prepare(QUIET, ws, "demo", merge=True, progress=False)
    assert not (ws / "caches/demo.h5").exists() and (ws / "caches/demo.h5.partial").exists()
    monkeypatch.setattr(CacheWriter, "write", real)
    run_prepare(QUIET, ws, "demo", merge=True, progress=False)
    with h5py.File(sharded["one"]) as a, h5py.File(ws / "caches/demo.h5") as b:
        for key in a:
            assert np.array_equal(a[key][:], b[key][:]), key
        assert _attrs(a) == _attrs(b)
    report = json.loads((ws / "caches/demo.h5.report.json").read_text())
    # shard 0 and what was copied of shard 1 (its failed first clip, then 2 ok ones) were not copied again
    assert report["skipped_done"] == CLIPS // 3 + 1 + 2


def test_damaged_shard_is_one_line_naming_it(sharded, tmp_path):
    from test_cache_damage import flip_byte

    ws = _copy_shards(sharded, tmp_path / "d")
    shard = ws / "caches/demo.shard-2-of-3.h5"
    with h5py.File(shard) as f:
        chunk = f["frames"].id.get_chunk_info_by_coord((3, 0, 0, 0, 0))
    flip_byte(shard, chunk.byte_offset + chunk.size // 2)
    line = _refused(ws, "--merge")
    assert f"cache {shard} is damaged" in line and "checksum" in line
    assert "mmvid prepare demo" in line and "--shard 2/3 --force" in line


def test_latest_cache_is_never_a_shard(sharded, tmp_path):
    from mmvid.data.cache_lookup import resolve_cache

    ws = _copy_shards(sharded, tmp_path / "l")
    with pytest.raises(MmvidError, match=r"only shards .*`mmvid prepare demo --merge`"):
        resolve_cache(ws, None)
    shutil.copy(sharded["one"], ws / "caches/one.h5")
    (ws / "caches/demo.shard-1-of-3.h5").touch()  # the newest file
    assert resolve_cache(ws, None).name == "one.h5"


def test_merging_again_is_a_no_op_until_a_shard_changes(sharded, tmp_path):
    ws = _copy_shards(sharded, tmp_path / "again")
    shutil.copy(sharded["merged"], ws / "caches/demo.h5")
    res = CliRunner().invoke(app, ["prepare", "demo", "-w", str(ws), "--merge"])
    assert res.exit_code == 0 and "already complete" in res.output
    run_prepare(QUIET, ws, "demo", clips=CLIPS, shard="1/3", force=True, progress=False)  # now BROKEN decodes
    res = CliRunner().invoke(app, ["prepare", "demo", "-w", str(ws), "--merge"])
    assert res.exit_code == 0 and "30/30 clips ok" in " ".join(res.output.split())
    assert (read_info(ws / "caches/demo.h5").status == 1).all()
