"""`prepare` when things go wrong around it: decoder workers die with a killed parent (and the run
resumes), and every input the `folder` scan does not use is named with its reason, in the summary
and in `<cache>.report.json`, with a warning for classes that cannot be learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.data.cache import read_info
from mmvid.data.prepare import unlearnable_classes
from mmvid.data.sources import get_source
from mmvid.errors import MmvidError

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--image-size", "32", "--clip-seconds", "2"]


def write_clip(path: Path, seed: int = 0) -> Path:
    """A real 2 s H.264 + AAC mp4 (32x32, 5 fps), as the demo writes them."""
    from mmvid.data.sources.demo import write_mp4

    rng = np.random.default_rng(seed)
    t = np.arange(32000) / 16000
    write_mp4(path, (rng.random((10, 32, 32, 3)) * 255).astype(np.uint8),
              (0.2 * np.sin(2 * np.pi * (300 + 50 * seed) * t)).astype(np.float32))
    return path


def messy_tree(root: Path) -> Path:
    """Two good classes plus one of each input the folder scan must report."""
    for c, cls in enumerate(("cat", "dog")):
        for i in range(3):
            write_clip(root / cls / f"{cls}{i}.mp4", seed=3 * c + i)
    write_clip(root / "top.mp4", seed=9)  # a clip at the root level
    write_clip(root / "dog" / "x.mp4" / "inner.mp4", seed=10)  # a folder named x.mp4
    (root / "empty").mkdir()  # a class folder with no clips
    (root / "empty" / "README.txt").write_text("no videos here")
    (root / "bad").mkdir()  # a class whose clips all fail to decode
    for i in range(2):
        (root / "bad" / f"b{i}.mp4").write_bytes(np.random.default_rng(i).bytes(64))
    (root / "loop").symlink_to(root)  # a symlink loop back to the root
    (root / "cat" / "self.mp4").symlink_to(root / "cat" / "self.mp4")  # a link to itself (ELOOP)
    (root / "cat" / "gone.mp4").symlink_to(root / "nowhere.mp4")  # a broken link
    (root / "train.txt").write_text("not an input: passed over\n")
    return root


EXPECTED_SKIPS = {
    "top.mp4": "video at the top level of --root, not in a <class>/ folder",
    "dog/x.mp4": "a folder named like a video, not a video file",
    "empty": "class folder with no video files: not a class",
    "cat/self.mp4": "symlink loop",
    "loop": "symlink loop",
    "cat/gone.mp4": "broken symlink: its target does not exist",
}


def test_folder_scan_names_every_skipped_input(tmp_path):
    root = messy_tree(tmp_path / "data")
    src = get_source("folder")(root=root, seed=0)
    # label order: the class folders that hold videos, sorted by name (the empty one is not a class)
    assert src.class_names == ["bad", "cat", "dog"]
    assert sorted(c.name for c in src.clips) == ["bad/b0", "bad/b1", "cat/cat0", "cat/cat1", "cat/cat2",
                                                 "dog/dog0", "dog/dog1", "dog/dog2"]
    assert all(src.class_names[c.label] == c.name.split("/")[0] for c in src.clips)
    assert {e["name"]: e["reason"] for e in src.excluded} == EXPECTED_SKIPS
    for name in EXPECTED_SKIPS:  # each also in a readable note
        assert any(name in n for n in src.notes), name
    # a second scan gives exactly the same clips, labels and splits
    again = get_source("folder")(root=root, seed=0)
    assert [(c.name, c.label, c.split) for c in again.clips] == [(c.name, c.label, c.split) for c in src.clips]


def test_folder_scan_duplicates_and_videos_only_at_the_root(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "a.mp4").symlink_to(clip)
    (root / "cat" / "a.mkv").symlink_to(clip)  # same <class>/<name> as a.mp4
    (root / "cat" / "sub").mkdir()
    (root / "cat" / "sub" / "b.mp4").symlink_to(clip)
    src = get_source("folder")(root=root)
    assert [c.video.name for c in src.clips] == ["a.mkv"]  # the first by sorted name
    assert {e["name"]: e["reason"].split(" (")[0].split(":")[0] for e in src.excluded} == {
        "cat/a.mp4": "same <class>/<name> as another video of the class", "cat/sub": "folder inside a class folder"}
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.mp4").symlink_to(clip)
    with pytest.raises(MmvidError, match=r"no videos found .*1 videos are at the top level of --root.*\(a\.mp4\)"):
        get_source("folder")(root=flat)


def test_prepare_folder_reports_skips_and_unlearnable_classes(tmp_path):
    root = messy_tree(tmp_path / "data")
    res = CliRunner().invoke(app, ["prepare", "folder", "--root", str(root), "--workspace", str(tmp_path / "ws"), *SMALL])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # Rich wraps long lines
    assert "Traceback" not in out
    for name in EXPECTED_SKIPS:
        assert name in out, name
    assert "6 inputs were not prepared" in out
    assert "warning: 1 of 3 classes have no usable training clip" in out and "bad: all 2 clips failed to decode" in out
    cache = tmp_path / "ws/caches/folder.h5"
    report = json.loads(Path(f"{cache}.report.json").read_text())
    assert {e["name"]: e["reason"] for e in report["excluded"]} == EXPECTED_SKIPS
    assert sorted(f["name"] for f in report["failed"]) == ["bad/b0", "bad/b1"]
    assert report["empty_classes"] == [{"name": "bad", "reason": "all 2 clips failed to decode"}]
    assert report["ok"] == 6 and report["total"] == 8
    info = read_info(cache)
    assert info.class_names == ["bad", "cat", "dog"]  # the failed class keeps its label: the order is stable


def test_unlearnable_classes_reasons():
    from mmvid.data.cache import FAILED, OK

    info = SimpleNamespace(class_names=["a", "b", "c", "d"], labels=np.array([1, 1, 2, 2, 3, 3]),
                           status=np.array([FAILED, FAILED, OK, OK, OK, FAILED]), split=np.array([0, 0, 2, 1, 0, 2]))
    assert unlearnable_classes(info) == [
        {"name": "a", "reason": "no clip of this class in the source"},
        {"name": "b", "reason": "all 2 clips failed to decode"},
        {"name": "c", "reason": "no usable clip in the train split (1 in val, 1 in test)"}]


# ----------------------------------------------------------------------------- workers and kill -9


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (no psutil: /proc/<pid>/task/*/children, else pgrep -P)."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if tasks:
        out = []
        for t in tasks:
            try:
                out += [int(x) for x in t.read_text().split()]
            except OSError:  # the task ended meanwhile
                pass
        return out
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in found.split()]


def descendants(pid: int) -> list[int]:
    out = []
    for c in children(pid):
        out += [c, *descendants(c)]
    return out


def alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_gone(pids: list[int], bound: float = 30.0) -> list[int]:
    t0 = time.time()
    while time.time() - t0 < bound:
        left = [p for p in pids if alive(p)]
        if not left:
            return []
        time.sleep(0.2)
    return [p for p in pids if alive(p)]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_watchdog_ends_a_worker_whose_parent_died(tmp_path):
    """The fallback where PR_SET_PDEATHSIG is not available: the watchdog alone ends the orphan."""
    grandchild = ("import os; parent = os.getppid(); from mmvid.data.prepare import _watch_parent; "
                  "print(os.getpid(), flush=True); _watch_parent(parent, 0.1)")  # prints once it knows its parent
    middle = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {grandchild!r}]); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", middle], stdout=subprocess.PIPE, text=True, env=env())
    worker = int(proc.stdout.readline())
    assert alive(worker)
    proc.kill()
    proc.wait()
    left = wait_gone([worker])
    for p in left:  # never leave our own orphan behind, even when failing
        os.kill(p, signal.SIGKILL)
    assert not left


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_takes_the_workers_along_and_the_run_resumes(tmp_path):
    root = tmp_path / "data"
    for c, cls in enumerate(("a", "b")):
        clip = write_clip(tmp_path / f"{cls}.mp4", seed=c)
        (root / cls).mkdir(parents=True)
        for i in range(40):  # many clips, so prepare is still running when it is killed
            (root / cls / f"{cls}{i:03d}.mp4").symlink_to(clip)
    ws = tmp_path / "ws"
    cache = ws / "caches/folder.h5"
    args = ["prepare", "folder", "--root", str(root), "--workspace", str(ws), "--workers", "2", *SMALL]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mmvid.cli", *args], env=env(), cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT)
    kids: list[int] = []
    try:
        t0 = time.time()
        # until at least one clip is recorded (failures.json is written with every clip) and both workers run
        while time.time() - t0 < 300:
            kids = descendants(proc.pid)
            if Path(f"{cache}.failures.json").exists() and len(kids) >= 2:
                break
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()
            time.sleep(0.05)
        kids = descendants(proc.pid)
        assert len(kids) >= 2, "the decoder workers never started"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -9
        left = wait_gone(kids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"still running after the parent's kill -9: {left}"
    assert not cache.exists() and Path(f"{cache}.partial").exists()
    # the same command again resumes: clips recorded before the kill are not decoded again
    res = subprocess.run([sys.executable, "-m", "mmvid.cli", *args], env=env(), cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(Path(f"{cache}.report.json").read_text())
    assert report["ok"] == report["total"] == 80 and 1 <= report["skipped_done"] < 80
    assert (read_info(cache).status == 1).all()


@pytest.mark.parametrize("left", ["", "[{\"name\": \"bad/b0\", \"fi", None, "b0 only"])
def test_resume_keeps_failed_clips_whatever_the_kill_left_of_failures_json(tmp_path, monkeypatch, left):
    """A kill can land between the partial cache's flush and failures.json's (or, before atomic writes,
    inside the latter: CI once saw an empty file and the resume died on JSONDecodeError). The partial
    cache's status column is the authority: every clip it marks failed is in the final report."""
    import mmvid.data.prepare as P

    root = messy_tree(tmp_path / "data")
    source = get_source("folder")(root=root)
    assert [c.name for c in source.clips[:2]] == ["bad/b0", "bad/b1"]  # the failing clips come first
    params = P.PrepareParams(image_size=32, clip_seconds=2.0)
    cache = tmp_path / "folder.h5"
    real, calls = P._process_safe, []

    def interrupted_after_three(i, clip, p):
        calls.append(clip.name)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return real(i, clip, p)

    monkeypatch.setattr(P, "_process_safe", interrupted_after_three)
    with pytest.raises(MmvidError, match="re-run the same command to resume"):
        P.prepare(source, cache, params, progress=False)
    failures = Path(f"{cache}.failures.json")
    saved = {f["name"]: f["error"] for f in json.loads(failures.read_text())}
    assert sorted(saved) == ["bad/b0", "bad/b1"] and all(saved.values())
    if left is None:
        failures.unlink()
    elif left == "b0 only":  # killed after the cache marked b1 failed, before the JSON said so
        failures.write_text(json.dumps([f for f in json.loads(failures.read_text()) if f["name"] == "bad/b0"]))
    else:
        failures.write_text(left)
    monkeypatch.setattr(P, "_process_safe", real)
    report = P.prepare(source, cache, params, progress=False)
    assert report.skipped_done == 3 and report.ok == 6
    assert [f["name"] for f in report.failed] == ["bad/b0", "bad/b1"]
    lost = {f["name"] for f in report.failed if "error text was lost" in f["error"]}
    assert lost == ({"bad/b1"} if left == "b0 only" else {"bad/b0", "bad/b1"}), report.failed
    assert all(f["error"] == saved[f["name"]] for f in report.failed if f["name"] not in lost)
    assert [f["name"] for f in json.loads(Path(f"{cache}.report.json").read_text())["failed"]] == ["bad/b0", "bad/b1"]
