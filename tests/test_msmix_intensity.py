"""CREMA-D's emotion levels, from the file name to MS-Mix's SAL: ``prepare`` stores them in the cache, the
training batches carry their targets, MS-Mix aligns with them, and an older cache without them still trains.
Also the CREMA-D MS-Mix recipes' label groups. Real clips from ../shared/data/crema_d."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from rich.console import Console

from mmvid.augment.msmix import MSMix, label_groups
from mmvid.config import resolve_config
from mmvid.data.cache import check_cache, read_info
from mmvid.data.torch_dataset import INTENSITY_KEY
from mmvid.engine.loaders import make_loader
from mmvid.engine.loop import train
from mmvid.workflows import run_prepare

QUIET = Console(quiet=True)
CLASSES = ["NEU", "HAP", "SAD", "FEA", "DIS", "ANG"]
# Real clips under names of other levels (the level is read from the name): sentence IEO, as in the dataset.
RENAMED = {"1001_IEO_ANG_LO": "1001_DFA_ANG_XX", "1001_IEO_ANG_MD": "1001_DFA_ANG_XX", "1001_IEO_ANG_HI": "1001_DFA_ANG_XX",
           "1001_IEO_HAP_HI": "1001_DFA_HAP_XX", "1001_IEO_SAD_LO": "1001_DFA_SAD_XX", "1001_IEO_NEU_XX": "1001_DFA_NEU_XX"}
# What docs/methods.md states (mmvid/data/sources/cremad.py CREMAD_INTENSITY), typed again here.
TARGET = {"LO": 0.2, "MD": 0.5, "HI": 0.8, "XX": 0.5}


def level_of(name: str) -> str:
    """The fourth field of an official CREMA-D name, e.g. 1001_IEO_ANG_HI -> HI."""
    m = re.fullmatch(r"\d{4}_[A-Z]{3}_(NEU|HAP|SAD|FEA|DIS|ANG)_(LO|MD|HI|XX)", name)
    assert m, name
    return m[2]


def target_of(name: str) -> float:
    return 0.0 if name.split("_")[2] == "NEU" else TARGET[level_of(name)]


@pytest.fixture(scope="module")
def cremad_root(shared_data, tmp_path_factory) -> Path:
    """The 6 real clips, and 6 copies of them under names with other levels (12 clips, 2 per class)."""
    root = tmp_path_factory.mktemp("crema_d")
    (root / "VideoFlash").mkdir()
    real = shared_data / "crema_d" / "VideoFlash"
    for p in sorted(real.glob("*.flv")):
        shutil.copyfile(p, root / "VideoFlash" / p.name)
    for new, old in RENAMED.items():
        shutil.copyfile(real / f"{old}.flv", root / "VideoFlash" / f"{new}.flv")
    return root


@pytest.fixture(scope="module")
def cremad_ws(cremad_root, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    run_prepare(QUIET, ws, "cremad", root=cremad_root, progress=False, params={"image_size": 32}, workers=1)
    return ws


def test_prepare_stores_the_emotion_level_of_every_real_cremad_clip(shared_data, tmp_path):
    """The real clips in their official layout (all six are level XX) with the OGM-GE fixture split."""
    root = shared_data / "crema_d"
    cache = run_prepare(QUIET, tmp_path, "cremad", root=root, train_list=root / "splits_fixture/train.csv",
                        test_list=root / "splits_fixture/test.csv", progress=False, params={"image_size": 32}, workers=1)
    info = read_info(cache)
    assert info.intensity is not None and len(info.names) == 6
    levels = [info.intensity.levels[k] for k in info.intensity.codes]
    assert levels == [level_of(n) for n in info.names] == ["XX"] * 6
    with h5py.File(cache) as f:
        assert f["intensity"].dtype == np.int8 and json.loads(f.attrs["intensity_levels"]) == ["XX", "LO", "MD", "HI"]


def test_prepare_stores_lo_md_hi_and_their_targets(cremad_ws):
    info = read_info(cremad_ws / "caches" / "cremad.h5")
    assert sorted(info.names) == sorted([*RENAMED, *(f"1001_DFA_{c}_XX" for c in CLASSES)])
    levels = [info.intensity.levels[k] for k in info.intensity.codes]
    assert levels == [level_of(n) for n in info.names]
    assert {"LO", "MD", "HI", "XX"} <= set(levels)
    rows = np.arange(len(info.names))
    assert info.intensity.targets(info.labels, rows).tolist() == pytest.approx([target_of(n) for n in info.names])
    assert check_cache(info) == []  # the full verification reads /intensity too


def test_training_batches_carry_each_clips_intensity_target(cremad_ws):
    """The DataLoader and the device-resident loader (``--cache-on-gpu``, here on the CPU) both add the clip's
    target under INTENSITY_KEY, in the batch's order; without ``intensity`` they add nothing."""
    info = read_info(cremad_ws / "caches" / "cremad.h5")
    rows = np.arange(len(info.names))[::-1].copy()
    for on_device in (False, True):
        cfg = resolve_config(None, {"data.batch_size": 5, "data.workers": 0, "data.cache_on_gpu": on_device,
                                    "device": "cpu"})
        loader = make_loader(info, rows, cfg, train=False, shuffle=False, device=torch.device("cpu"), intensity=True)
        got = torch.cat([inputs[INTENSITY_KEY] for inputs, _ in loader]).tolist()
        assert got == pytest.approx([target_of(info.names[r]) for r in rows])
        plain = make_loader(info, rows, cfg, train=False, shuffle=False, device=torch.device("cpu"))
        assert all(INTENSITY_KEY not in inputs for inputs, _ in plain)


def tiny_cremad(overrides=None):
    return resolve_config("cremad-msmix", {"model.encoder": "small", "model.width": 4, "epochs": 1, "data.batch_size": 6,
                                           "data.val_fraction": 0.0, "data.workers": 0, "device": "cpu",
                                           **(overrides or {})})


def test_msmix_aligns_with_the_cremad_levels_in_training(cremad_ws, tmp_path, monkeypatch):
    seen = []
    real = MSMix.sal_target

    def record(self, out, y, ctx):
        s = real(self, out, y, ctx)
        seen.append((y.tolist(), s.tolist()))
        return s

    monkeypatch.setattr(MSMix, "sal_target", record)
    train(tiny_cremad(), cremad_ws / "caches" / "cremad.h5", tmp_path / "run", progress=False)
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["msmix_sal_labels"] == 1.0
    assert seen and all(len(y) == len(s) for y, s in seen)
    for y, s in seen:  # NEU clips have target 0, the others a level's target
        for label, value in zip(y, s):
            assert value == pytest.approx(0.0) if CLASSES[label] == "NEU" else round(value, 6) in (0.2, 0.5, 0.8)


def test_a_cremad_cache_without_levels_still_trains_with_a_note(cremad_ws, tmp_path, capsys):
    """A cache of an older mmvid (no /intensity): MS-Mix falls back to the confidence target, saying so once."""
    old = tmp_path / "caches" / "cremad.h5"
    old.parent.mkdir()
    shutil.copyfile(cremad_ws / "caches" / "cremad.h5", old)
    with h5py.File(old, "a") as f:
        del f["intensity"]
        del f.attrs["intensity_levels"], f.attrs["intensity_table"]
    assert read_info(old).intensity is None
    capsys.readouterr()
    train(tiny_cremad(), old, tmp_path / "run", progress=False)
    out = capsys.readouterr().out
    notes = [ln for ln in out.splitlines() if ln.startswith("note:")]
    assert len(notes) == 1 and "has no intensity levels" in notes[0] and "cremad --force" in notes[0]
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert line["msmix_sal_labels"] == 0.0


def test_damaged_levels_are_caught_on_open(cremad_ws, tmp_path):
    from mmvid.data.cache import CacheDamaged

    bad = tmp_path / "cremad.h5"
    shutil.copyfile(cremad_ws / "caches" / "cremad.h5", bad)
    with h5py.File(bad, "a") as f:
        f["intensity"][0] = 7
    with pytest.raises(CacheDamaged, match="level codes outside 0..3.*--force"):
        read_info(bad)


def test_sharded_prepare_merges_the_levels(cremad_root, cremad_ws, tmp_path):
    kw = dict(root=cremad_root, progress=False, params={"image_size": 32}, workers=1)
    for i in range(2):
        run_prepare(QUIET, tmp_path, "cremad", shard=f"{i}/2", **kw)
    merged = read_info(run_prepare(QUIET, tmp_path, "cremad", merge=True, progress=False))
    whole = read_info(cremad_ws / "caches" / "cremad.h5")
    assert merged.names == whole.names
    assert np.array_equal(merged.intensity.codes, whole.intensity.codes)
    assert np.array_equal(merged.intensity.table, whole.intensity.table)


def test_unspecified_level_is_perceived_between_lo_and_md_nearest_md(shared_data):
    """Why XX counts as MD: the raters' mean perceived intensity (summaryTable.csv, MultiModalLevel, 0-100) of the
    clips of the five emotions at each level. (NEU is 0 whatever its level: no emotion.)"""
    by_level: dict[str, list[float]] = {"LO": [], "MD": [], "HI": [], "XX": []}
    with open(shared_data / "crema_d" / "processedResults" / "summaryTable.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            _, _, emotion, level = row["FileName"].split("_")
            try:
                value = float(row["MultiModalLevel"])
            except ValueError:  # a tie lists several ratings ("50:60")
                continue
            if emotion != "NEU":
                by_level[level].append(value)
    mean = {k: statistics.mean(v) for k, v in by_level.items()}
    assert mean["LO"] < mean["XX"] < mean["MD"] < mean["HI"]
    assert abs(mean["XX"] - mean["MD"]) < abs(mean["XX"] - mean["LO"])
    assert TARGET["XX"] == TARGET["MD"]


def test_every_cremad_msmix_recipe_groups_every_class_by_valence():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    found = 0
    for path in sorted(recipes.rglob("*.yaml")):
        cfg = resolve_config(str(path))
        if cfg.augment.name != "msmix" or cfg.data.dataset != "cremad":
            continue
        found += 1
        compat = label_groups(cfg.augment.args.get("groups"), CLASSES)  # raises if a class is in no group
        assert compat is not None, f"{path.name}: CREMA-D needs label groups"
        neu, hap = CLASSES.index("NEU"), CLASSES.index("HAP")
        negative = [CLASSES.index(c) for c in ("SAD", "FEA", "DIS", "ANG")]
        assert compat[neu].all(), f"{path.name}: NEU contradicts no emotion"
        assert not compat[hap, negative].any() and compat[hap, neu], f"{path.name}: HAP pairs with HAP and NEU only"
        assert compat[negative][:, negative].all()
    assert found >= 1
