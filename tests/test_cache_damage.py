"""Damaged caches and places mmvid cannot write to (issue 10 §3): each kind of damage, made on a real
demo cache, gives one line naming the cache and `mmvid prepare ... --force` from `prepare --info` and
from `train` (exit 2, no traceback), read-only workspaces one line naming the path.

Damage is made the way it happens: bytes flipped on disk (inside a chunk's data, found with h5py's
chunk index; in the root group's B-tree; in a dataset's object header), or values rewritten through
h5py (an out-of-range label, a NaN spectrogram: HDF5 recomputes the checksum, so only the value
checks can catch these).

Read-only: the tests run as root, which ignores permission bits. A workspace is made read-only with
``chattr -R +i`` (immutable; EPERM even for root) when running as root, ``chmod -R a-w`` otherwise, and
the test is skipped with the reason when neither works. Independently of privileges, a file or folder
put where mmvid must write (a file named ``runs``, a folder named ``eval_test.json``) gives the same
one line, which covers every command on any machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.data.cache import VERSION, CacheDamaged, read_info

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent
TRAIN = ["--recipe", "demo", "--epochs", "1", "--set", "data.batch_size=16"]


# ----------------------------------------------------------------------------- damage


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ 0xFF]))


def train_row(path: Path) -> int:
    """A row that `train` reads in its first epoch (the demo recipe's split of the cache)."""
    from mmvid.config import resolve_config
    from mmvid.engine.loaders import make_splits

    cfg = resolve_config("demo", {})
    return int(make_splits(read_info(path), cfg.data.val_fraction, cfg.seed).train[0])


def damage(path: Path, kind: str) -> None:
    row = train_row(path)
    if kind == "chunk":  # one byte inside the stored frames of one clip
        with h5py.File(path) as f:
            chunk = f["frames"].id.get_chunk_info_by_coord((row, 0, 0, 0, 0))
        flip_byte(path, chunk.byte_offset + chunk.size // 2)
    elif kind == "btree":  # the first child address of the root group's B-tree (node type 0)
        data = path.read_bytes()
        at = next(i for i in range(len(data) - 4) if data[i:i + 4] == b"TREE" and data[i + 4] == 0)
        flip_byte(path, at + 24 + 8 + 4)  # 24-byte node header, 8-byte key, then the child's address
    elif kind == "header":  # the flags of the first message in /labels's object header
        with h5py.File(path) as f:
            addr = h5py.h5o.get_info(f["labels"].id).addr
        flip_byte(path, addr + 16 + 4)
    elif kind == "label":
        with h5py.File(path, "a") as f:
            f["labels"][row] = 4611686018427387907
    elif kind == "nan":
        with h5py.File(path, "a") as f:
            f["spectrogram"][row] = np.nan
    else:
        raise ValueError(kind)


@pytest.fixture
def ws(tiny_ws, tmp_path) -> Path:
    """A workspace holding a copy of the session's demo cache (written by this mmvid: version 2)."""
    (tmp_path / "ws" / "caches").mkdir(parents=True)
    shutil.copy(tiny_ws / "caches" / "demo.h5", tmp_path / "ws" / "caches" / "demo.h5")
    return tmp_path / "ws"


def one_line_error(res, *needles: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr containing every needle; returns that line."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def test_cache_is_written_with_checksums(ws):
    info = read_info(ws / "caches" / "demo.h5")
    assert info.version == VERSION == 2 and info.checksummed
    with h5py.File(info.path) as f:
        assert all(f[k].fletcher32 for k in f), {k: f[k].fletcher32 for k in f}
    res = runner.invoke(app, ["prepare", "demo", "-w", str(ws), "--info"])
    assert res.exit_code == 0 and "every chunk's checksum" in res.output and "note:" not in res.output


WHAT = {"chunk": "failed its checksum", "btree": "unreadable", "header": "unreadable",
        "label": "labels outside 0..9", "nan": "NaN"}


@pytest.mark.parametrize("kind", list(WHAT))
def test_damage_is_one_line_from_info_and_train(ws, kind):
    cache = ws / "caches" / "demo.h5"
    damage(cache, kind)
    line = one_line_error(runner.invoke(app, ["prepare", "demo", "-w", str(ws), "--info"]),
                          f"cache {cache} is damaged", "mmvid prepare demo", "--force")
    assert WHAT[kind] in line or (kind == "nan" and "non-finite" in line)
    line = one_line_error(runner.invoke(app, ["train", "-w", str(ws), *TRAIN]),
                          f"cache {cache} is damaged", "mmvid prepare demo", "--force")
    assert "lr" not in line and "Target" not in line
    if kind in ("chunk", "nan"):  # read only when the clip's batch comes: named with its place in training
        assert WHAT[kind] in line
    if kind == "nan":
        assert "at epoch 1, step" in line  # found by the training step's non-finite-loss check, not by evaluation


def test_damaged_chunk_read_in_a_dataloader_worker_is_one_line(ws):
    """The real command line with 2 DataLoader workers: the worker's error crosses back as one line."""
    cache = ws / "caches" / "demo.h5"
    damage(cache, "chunk")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "mmvid.cli", "train", "-w", str(ws), *TRAIN, "--workers", "2"],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "worker" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cache {cache} is damaged" in lines[0] and "failed its checksum" in lines[0]
    assert "--force" in lines[0]


def test_nan_in_an_evaluated_clip_is_cache_damage(ws):
    """A NaN that only evaluation reads (a test clip) is caught there instead of giving a NaN loss."""
    cache = ws / "caches" / "demo.h5"
    row = int(read_info(cache).indices("test")[0])
    with h5py.File(cache, "a") as f:
        f["spectrogram"][row] = np.inf
    line = one_line_error(runner.invoke(app, ["train", "-w", str(ws), *TRAIN]), f"cache {cache} is damaged", "--force")
    assert "in evaluation" in line


def test_nan_with_the_cache_in_memory_is_caught_on_load(ws):
    from mmvid.data.torch_dataset import CacheDataset

    cache = ws / "caches" / "demo.h5"
    damage(cache, "nan")
    with pytest.raises(CacheDamaged, match=r"NaN or inf in the spectrogram of 1 clip.*--force"):
        CacheDataset(cache, read_info(cache).indices("train"), ["audio", "video"], in_memory=True)


def test_rebuild_command_names_the_cache_and_its_dataset(ws, tmp_path):
    from mmvid.data.cache import rebuild_command

    other = tmp_path / "elsewhere" / "mine.h5"
    assert rebuild_command(other, "cremad") == "mmvid prepare cremad --name mine --force"
    assert rebuild_command(ws / "caches" / "demo.h5", "demo") == f"mmvid prepare demo -w {ws} --force"
    # the DataLoader re-raises a worker's exception from its formatted traceback: the line survives
    text = f"cache {other} is damaged (x); rebuild it with `mmvid prepare cremad --force`"
    wrapped = ("Caught CacheDamaged in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in f\nmmvid.data.cache.CacheDamaged: ' + text + "\n")
    assert str(CacheDamaged(wrapped)) == text


# ----------------------------------------------------------------------------- version 1


def downgrade_to_v1(src: Path, dst: Path) -> None:
    """The layout mmvid wrote before checksums: no filters, variable-length names, version 1."""
    with h5py.File(src) as a, h5py.File(dst, "w") as b:
        for key in a:
            d = a[key]
            if key == "names":
                b.create_dataset(key, data=np.asarray([n.decode() for n in d[:]], dtype=object), dtype=h5py.string_dtype())
            elif d.ndim > 1:
                b.create_dataset(key, data=d[:], chunks=(1, *d.shape[1:]))
            else:
                b.create_dataset(key, data=d[:])
        for k, v in a.attrs.items():
            b.attrs[k] = v
        b.attrs["version"] = 1


def test_version_1_cache_still_loads_and_info_suggests_force(ws, tmp_path):
    from mmvid.data.torch_dataset import CacheDataset

    cache = ws / "caches" / "demo.h5"
    downgrade_to_v1(cache, tmp_path / "v1.h5")
    shutil.move(tmp_path / "v1.h5", cache)
    info = read_info(cache)
    assert info.version == 1 and not info.checksummed and len(info.names) == 60
    with h5py.File(cache) as f:
        assert not f["frames"].fletcher32
        frames = f["frames"][int(info.indices("train")[0])]
    x, y = CacheDataset(cache, info.indices("train"), ["audio", "video"])[0]
    assert np.array_equal(x["video"].movedim(-3, -1).numpy(), frames) and y == info.labels[info.indices("train")[0]]
    res = runner.invoke(app, ["prepare", "demo", "-w", str(ws), "--info"])
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and "no per-chunk checksums" in res.output and "--force" in res.output
    # a rebuild writes version 2 again
    res = runner.invoke(app, ["prepare", "demo", "-w", str(ws), "--clips", "60", "--force"])
    assert res.exit_code == 0, res.output
    assert read_info(cache).checksummed


# ----------------------------------------------------------------------------- read-only places


@pytest.fixture
def run_ws(tiny_ws, tiny_run, tmp_path) -> Path:
    """A workspace with the demo cache and a trained run (copies; the run's checkpoint reads the session cache)."""
    ws = tmp_path / "ws"
    for part in ("caches", "raw"):  # raw: the generated demo clips, which `prepare demo` regenerates for --clips 12
        shutil.copytree(tiny_ws / part, ws / part)
    shutil.copytree(tiny_run, ws / "runs" / tiny_run.name)
    return ws


COMMANDS = {  # command line -> (what is put in the way, the path the line must name)
    "prepare": (["prepare", "demo", "--name", "other", "--clips", "12"], "caches", "caches"),
    "train": (["train", *TRAIN, "--run-name", "new"], "runs/new", "runs/new"),
    "evaluate": (["evaluate", "tiny-concat"], "runs/tiny-concat/eval_test.json", "eval_test.json"),
    "visualize": (["visualize", "curves", "tiny-concat"], "runs/tiny-concat/figures", "figures"),
    "report": (["report", "tiny-concat", "--no-umap", "--no-robustness"], "runs/tiny-concat/report.html", "report.html"),
    "robustness": (["robustness", "tiny-concat", "--drop", "audio"], "runs/tiny-concat/robustness", "robustness"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_something_in_the_way_is_one_line(run_ws, command):
    """A file where mmvid must create a folder, or a folder where it must write a file (works as root)."""
    args, blocker, named = COMMANDS[command]
    target = run_ws / blocker
    if target.suffix in (".json", ".html"):
        target.mkdir(parents=True)  # a folder where a file goes
    else:
        if target.is_dir():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("not a folder")  # a file where a folder goes
    shutil.rmtree(run_ws / "raw", ignore_errors=True)
    line = one_line_error(runner.invoke(app, [*args, "-w", str(run_ws)]), "cannot ", named)
    assert str(run_ws) in line


@contextmanager
def read_only(path: Path):
    """Make ``path`` and everything below it unwritable, for root too; skip when this machine cannot."""
    if os.geteuid() == 0:
        chattr = shutil.which("chattr")
        done = chattr and subprocess.run([chattr, "-R", "+i", str(path)], capture_output=True).returncode == 0
        if not done:
            subprocess.run([chattr, "-R", "-i", str(path)], capture_output=True) if chattr else None
            pytest.skip("running as root, and `chattr +i` is unavailable here: root ignores permission bits")
        try:
            yield
        finally:
            subprocess.run([chattr, "-R", "-i", str(path)], check=True)
    else:
        modes = {p: p.stat().st_mode for p in [path, *path.rglob("*")]}
        for p, m in modes.items():
            p.chmod(m & ~0o222)
        try:
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)


@pytest.mark.parametrize("command", list(COMMANDS))
def test_read_only_workspace_is_one_line(run_ws, command):
    args = COMMANDS[command][0]
    with read_only(run_ws):
        res = runner.invoke(app, [*args, "-w", str(run_ws)])
    line = one_line_error(res, "cannot ", str(run_ws))
    assert "--workspace" in line or "--out" in line
