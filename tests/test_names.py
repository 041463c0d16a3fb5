"""A name never writes outside the workspace, and mmvid never overwrites a file it did not write (issue 20 §1).

Every command that takes a name (or a run, which may be a name) is run with the names that would leave
the folder they are joined to: ``../x``, an absolute path, ``.``, ``..``, ``a/b``, the empty name and a
hidden name. Each exits 2 with one line and no traceback, before any training or decoding, and the
files of the whole sandbox (the workspace, the current folder and their parents up to the test's own
folder) are the same before and after. Then: a run folder, a cache or an ``--out`` path holding files
mmvid did not write is refused with one line (even with ``--force``) and left as it was; mmvid's own
runs, caches and outputs are still resumed, rebuilt and replaced as before.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.errors import MmvidError

runner = CliRunner()

# Names that would leave the folder they are joined to, or hide in it: an escape, an absolute path (ABS:
# replaced by a path inside the test's sandbox), the folder itself, its parent, a sub-path, nothing, a hidden file.
BAD_NAMES = ["../x", "ABS", ".", "..", "a/b", "", ".hidden"]
FAST = ["--recipe", "demo", "--epochs", "1", "--set", "data.batch_size=8"]


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Path:
    """tmp/sandbox/{ws (workspace), deep/cwd (current folder)}: ``../x`` and ``..`` from the current folder,
    and ABS, all land inside the sandbox, whose every file is compared before and after."""
    box = tmp_path / "sandbox"
    (box / "ws").mkdir(parents=True)
    (box / "deep" / "cwd").mkdir(parents=True)
    (box / "deep" / "cwd" / "notes.txt").write_text("the user's own file\n")
    monkeypatch.chdir(box / "deep" / "cwd")
    return box


def tree(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` with a digest of its bytes (folders: 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def name_value(name: str, box: Path) -> str:
    return str(box / "abs" / "x") if name == "ABS" else name


def one_line(res, *needles: str) -> str:
    """Exit 2, no traceback, one line on stderr (holding every needle); returns it."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit)), res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def recipe_with_run_name(box: Path, name: str) -> str:
    path = box / "deep" / "third-party.yaml"
    path.write_text(yaml.safe_dump({"extends": "demo", "run_name": name}))
    return str(path)


# Each command that takes a name, as (id, args for the name N in sandbox B, what the one line must name or "").
COMMANDS = {
    "train --run-name": (lambda n, b: ["train", *FAST, "--run-name", n], "--run-name"),
    "train --set run_name=": (lambda n, b: ["train", *FAST, "--set", f"run_name={n}"], "--set run_name"),
    "train --recipe (run_name:)": (lambda n, b: ["train", "--recipe", recipe_with_run_name(b, n)], "third-party.yaml"),
    "train --dataset": (lambda n, b: ["train", *FAST, "--dataset", n], "--dataset"),
    "train --resume": (lambda n, b: ["train", "--resume", n], ""),
    "prepare --name": (lambda n, b: ["prepare", "demo", "--clips", "10", "--name", n], "--name"),
    "prepare folder --name": (lambda n, b: ["prepare", "folder", "--root", str(b), "--name", n], "--name"),
    "prepare --name --shard": (lambda n, b: ["prepare", "demo", "--clips", "10", "--name", n, "--shard", "0/2"], "--name"),
    "prepare --name --merge": (lambda n, b: ["prepare", "demo", "--name", n, "--merge"], "--name"),
    "prepare --name --force": (lambda n, b: ["prepare", "demo", "--clips", "10", "--name", n, "--force"], "--name"),
    "prepare --name --info": (lambda n, b: ["prepare", "demo", "--name", n, "--info"], "--name"),
    "sweep --set run_name=": (lambda n, b: ["sweep", "table1/cremad", "--set", f"run_name={n}", "--dry-run"], "run_name"),
    "sweep --dataset": (lambda n, b: ["sweep", "table1/cremad", "--dataset", n, "--dry-run"], "--dataset"),
    "diagnose --dataset": (lambda n, b: ["diagnose", "--dataset", n, "--epochs", "1"], "--dataset"),
    "diagnose RUN": (lambda n, b: ["diagnose", n], ""),
    "evaluate RUN": (lambda n, b: ["evaluate", n], ""),
    "evaluate RUN RUN (comparison)": (lambda n, b: ["evaluate", n, n], ""),
    "robustness RUN": (lambda n, b: ["robustness", n, "--drop", "audio"], ""),
    "robustness RUN RUN (comparison)": (lambda n, b: ["robustness", n, n, "--drop", "audio"], ""),
    "visualize curves RUN": (lambda n, b: ["visualize", "curves", n], ""),
    "report RUN": (lambda n, b: ["report", n, "--no-umap", "--no-robustness"], ""),
}


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_name_that_leaves_its_folder_is_one_line_and_writes_nothing(sandbox, command, name):
    """Exit 2 with one line before any work, and not one file of the sandbox (workspace included) changes."""
    make, needle = COMMANDS[command]
    before = tree(sandbox)
    res = runner.invoke(app, [*make(name_value(name, sandbox), sandbox), "-w", str(sandbox / "ws")])
    one_line(res, needle)
    after = tree(sandbox)
    # The recipe file the test wrote for the case is the one difference it may find.
    assert {k: v for k, v in after.items() if "third-party" not in k} == before


@pytest.mark.parametrize("name", ["run-1", "ok.v2", "A_b-3", "x" * 128])
def test_plain_names_are_accepted_everywhere(name):
    from mmvid.config import resolve_config
    from mmvid.schema import check_name, is_plain_name

    assert is_plain_name(name)
    assert resolve_config("demo", {"run_name": name, "data.dataset": name}).run_name == name
    assert check_name("--name", name) == name


@pytest.mark.parametrize("name", ["../x", "/abs", ".", "..", "a/b", "", ".hidden", "a\\b", "x\n", "é", "x" * 129, "a b"])
def test_is_plain_name_refuses_every_way_out(name):
    from mmvid.schema import is_plain_name

    assert not is_plain_name(name)


def test_a_saved_config_with_an_escaping_run_name_is_refused(tmp_path):
    """A run folder or checkpoint from someone else goes through the same rule as a flag."""
    from mmvid.config import config_from_dict, resolve_config

    saved = resolve_config("demo").to_dict()
    saved["run_name"] = "/elsewhere/victim"
    with pytest.raises(MmvidError, match="config run_name='/elsewhere/victim' is not valid.*plain name"):
        config_from_dict(saved)


# ----------------------------------------------------------------------------- sweep names


@pytest.mark.parametrize("target", ["../x", "ABS", ".", "..", "a/b", ".hidden"])
def test_a_sweeps_folder_is_a_plain_name_inside_the_workspace(sandbox, target):
    """Sweep and run names derive from the recipe paths given; whatever the path, they are plain names and the
    sweep writes only inside <workspace>/sweeps/ (here its Slurm script and plan, which need no training)."""
    from mmvid.schema import is_plain_name

    target = name_value(target, sandbox)
    folder = (Path.cwd() / target).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec.yaml").write_text(yaml.safe_dump({"extends": "demo", "paper": {"row": "r"}}))
    outside = {k: v for k, v in tree(sandbox).items() if not k.startswith("ws")}
    res = runner.invoke(app, ["sweep", target, "--seeds", "1", "--emit", "slurm", "-w", str(sandbox / "ws")])
    assert res.exit_code == 0, res.output
    (sweep,) = (sandbox / "ws" / "sweeps").iterdir()
    assert is_plain_name(sweep.name) and (sweep / "sweep.sbatch").is_file(), sweep
    plan = yaml.safe_load((sweep / "sweep.json").read_text())
    assert all(is_plain_name(r["name"]) for r in plan["runs"]), plan["runs"]
    assert {k: v for k, v in tree(sandbox).items() if not k.startswith("ws")} == outside


def test_sweep_names_of_odd_recipe_paths_are_plain():
    from mmvid.schema import is_plain_name
    from mmvid.sweeps.plan import _plain, _recipe_id, _target_name

    for text in ["../..", "./", "/", "a+b/c d", "é/ü", ".x", "-" * 300, "x" * 300]:
        assert is_plain_name(_target_name(text)), text
        assert is_plain_name(_recipe_id(Path(text) / "r.yaml")), text
    assert _plain("x" * 300, "f") != _plain("x" * 299 + "y", "f")  # long names stay apart


# ----------------------------------------------------------------------------- run folders mmvid did not write


def their_run_folder(path: Path) -> dict[str, str]:
    """A folder of another tool's files with the names mmvid writes (the issue's victim)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.yaml").write_text("their: config\n")
    (path / "metrics.jsonl").write_text('{"their": 1}\n')
    return tree(path)


@pytest.mark.parametrize("args", [["--run-name", "victim"], ["--resume", "victim"], ["--set", "run_name=victim"]])
def test_train_refuses_a_run_folder_it_did_not_write(tiny_ws, tmp_path, args):
    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    (ws / "caches" / "demo.h5").symlink_to(tiny_ws / "caches" / "demo.h5")
    before = their_run_folder(ws / "runs" / "victim")
    res = runner.invoke(app, ["train", "-w", str(ws), *FAST, *args] if args[0] != "--resume"
                        else ["train", "-w", str(ws), *args])
    one_line(res, f"{ws / 'runs' / 'victim'} exists but is not a run folder written by `mmvid train`", "even with --force")
    assert tree(ws / "runs" / "victim") == before


def test_train_refuses_a_file_in_place_of_its_run_folder(tiny_ws, tmp_path):
    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    (ws / "caches" / "demo.h5").symlink_to(tiny_ws / "caches" / "demo.h5")
    (ws / "runs").mkdir()
    (ws / "runs" / "victim").write_text("a file\n")
    one_line(runner.invoke(app, ["train", "-w", str(ws), *FAST, "--run-name", "victim"]), "cannot write run folder", "a file is in its place")
    assert (ws / "runs" / "victim").read_text() == "a file\n"


def test_the_library_train_refuses_a_folder_it_did_not_write(tiny_ws, tmp_path):
    """engine.train itself (what diagnose's fused and alone runs call) checks before it deletes metrics.jsonl."""
    from mmvid.config import resolve_config
    from mmvid.engine.loop import train

    before = their_run_folder(tmp_path / "theirs")
    with pytest.raises(MmvidError, match="is not a run folder written by `mmvid train`"):
        train(resolve_config("demo", {"epochs": 1}), tiny_ws / "caches" / "demo.h5", tmp_path / "theirs", progress=False)
    assert tree(tmp_path / "theirs") == before


def test_sweep_refuses_a_run_folder_it_did_not_write(tiny_ws, tmp_path):
    from mmvid.sweeps.plan import plan_sweep

    ws = tmp_path / "ws"
    name = plan_sweep(["table1/cremad"], seeds=1, only="*concat").runs[0].name
    before = their_run_folder(ws / "runs" / name)
    one_line(runner.invoke(app, ["sweep", "table1/cremad", "--seeds", "1", "--only", "*concat", "--dry-run", "-w", str(ws)]),
             "is not a run folder written by `mmvid train`", "rename the recipe")
    assert tree(ws / "runs" / name) == before


def test_what_marks_a_run_folder_as_mmvids(tiny_run, tmp_path):
    """A run's config.yaml starts with the mark from the first moment (a run killed before its first checkpoint
    is still resumable); a run of an mmvid from before the mark is recognised by its checkpoint_last.pt, or
    (a finished sweep run that kept only its metrics) by its summary.json."""
    from mmvid.workspace import CKPT_LAST, RUN_MARK, check_run_folder, is_mmvid_run

    assert (tiny_run / "config.yaml").read_text().startswith(RUN_MARK)
    assert is_mmvid_run(tiny_run)
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(tiny_run / "config.yaml", early / "config.yaml")
    assert is_mmvid_run(early)
    older = tmp_path / "older"
    older.mkdir()
    (older / "config.yaml").write_text((tiny_run / "config.yaml").read_text().split("\n", 1)[1])  # no mark
    assert not is_mmvid_run(older)
    shutil.copy(tiny_run / CKPT_LAST, older / CKPT_LAST)
    assert is_mmvid_run(older)
    (older / CKPT_LAST).unlink()
    (older / "summary.json").write_text('{"their": "summary"}')
    assert not is_mmvid_run(older)
    shutil.copy(tiny_run / "summary.json", older / "summary.json")
    assert is_mmvid_run(older)
    (tmp_path / "empty").mkdir()
    check_run_folder(tmp_path / "empty")  # an empty folder holds nothing to lose
    check_run_folder(tmp_path / "absent")


def test_resuming_mmvids_own_run_still_works(tiny_run, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(tiny_run, ws / "runs" / "mine")
    res = runner.invoke(app, ["train", "-w", str(ws), "--resume", "mine"])
    assert res.exit_code == 0, res.output
    assert "mine has finished all 1 epochs" in res.output and "run mine" in res.output


# ----------------------------------------------------------------------------- caches mmvid did not write


def their_hdf5(path: Path) -> None:
    with h5py.File(path, "w") as f:
        f.create_dataset("their_data", data=np.arange(5))
        f.attrs["format"] = "someone-else"


@pytest.mark.parametrize("force", [False, True], ids=["", "--force"])
@pytest.mark.parametrize("kind", ["text file", "other HDF5 file", "folder", "text .partial"])
@pytest.mark.parametrize("extra", [[], ["--shard", "0/2"]], ids=["", "--shard"])
def test_prepare_refuses_a_cache_path_it_did_not_write(tmp_path, kind, force, extra):
    """Before any clip is generated or decoded: the workspace holds nothing new afterwards."""
    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    target = ws / "caches" / ("vict.shard-0-of-2.h5" if extra else "vict.h5")
    if kind == "text file":
        target.write_text("not a cache\n")
    elif kind == "other HDF5 file":
        their_hdf5(target)
    elif kind == "folder":
        target.mkdir()
    else:
        target.with_name(target.name + ".partial").write_text("not a cache\n")
    before = tree(ws)
    res = runner.invoke(app, ["prepare", "demo", "--clips", "10", "--name", "vict", *extra, "-w", str(ws)]
                        + (["--force"] if force else []))
    one_line(res, "vict")
    assert tree(ws) == before


def test_merge_refuses_a_cache_it_did_not_write(tmp_path):
    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    their_hdf5(ws / "caches" / "vict.h5")
    before = tree(ws)
    one_line(runner.invoke(app, ["prepare", "demo", "--name", "vict", "--merge", "--force", "-w", str(ws)]),
             "is not a cache written by `mmvid prepare`", "even with --force")
    assert tree(ws) == before


def test_what_counts_as_mmvids_cache(tiny_ws, tmp_path):
    """An intact cache and a damaged one (h5py cannot open it: the case --force rebuilds) are mmvid's; another
    HDF5 file, a text file and a non-empty non-HDF5 .partial are not; an empty .partial (a kill at creation) is."""
    from mmvid.data.cache_writer import is_mmvid_cache

    mine = tmp_path / "mine.h5"
    shutil.copy(tiny_ws / "caches" / "demo.h5", mine)
    assert is_mmvid_cache(mine)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(mine.read_bytes()[:4096])
    assert is_mmvid_cache(truncated)
    their_hdf5(tmp_path / "theirs.h5")
    assert not is_mmvid_cache(tmp_path / "theirs.h5")
    (tmp_path / "text.h5").write_text("x")
    assert not is_mmvid_cache(tmp_path / "text.h5")
    (tmp_path / "empty.h5.partial").write_bytes(b"")
    assert is_mmvid_cache(tmp_path / "empty.h5.partial", partial=True)
    assert not is_mmvid_cache(tmp_path / "text.h5", partial=True)


def test_force_still_rebuilds_mmvids_own_damaged_cache(tiny_ws, tmp_path):
    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    cache = ws / "caches" / "demo.h5"
    cache.write_bytes((tiny_ws / "caches" / "demo.h5").read_bytes()[:50_000])  # truncated: h5py cannot open it
    res = runner.invoke(app, ["prepare", "demo", "--clips", "10", "--force", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    from mmvid.data.cache import read_info

    assert len(read_info(cache).names) == 10


# ----------------------------------------------------------------------------- --out


OUT_FOLDERS = {  # command with --out FOLDER (the run need not exist: --out is checked first)
    "robustness": lambda out: ["robustness", "nosuchrun", "--drop", "audio", "--out", str(out)],
    "diagnose": lambda out: ["diagnose", "nosuchrun", "--no-alone", "--out", str(out)],
}
OUT_FILES = {  # command with --out FILE, and the files it writes
    "report": (lambda out: ["report", "nosuchrun", "--out", str(out)], [""]),
    "visualize": (lambda out: ["visualize", "curves", "nosuchrun", "--out", str(out)], [".png", ".svg"]),
}


@pytest.mark.parametrize("command", list(OUT_FOLDERS))
@pytest.mark.parametrize("kind", ["folder of other files", "file"])
def test_out_folder_of_other_files_is_refused(tmp_path, command, kind):
    out = tmp_path / "theirs"
    if kind == "file":
        out.write_text("their file\n")
    else:
        out.mkdir()
        (out / "robustness.csv").write_text("their,table\n")
        (out / "diagnosis.json").write_text('{"their": 1}')
    before = tree(tmp_path)
    one_line(runner.invoke(app, [*OUT_FOLDERS[command](out), "-w", str(tmp_path / "ws")]), f"--out {out}", "mmvid")
    assert tree(tmp_path) == before


@pytest.mark.parametrize("command", list(OUT_FILES))
@pytest.mark.parametrize("kind", ["text", "png", "html", "folder"])
def test_out_file_mmvid_did_not_write_is_refused(tmp_path, command, kind):
    make, suffixes = OUT_FILES[command]
    stem = tmp_path / ("page.html" if command == "report" else "figure")
    target = Path(f"{stem}{suffixes[-1]}")
    if kind == "folder":
        target.mkdir()
    else:
        target.write_bytes({"text": b"their notes\n", "png": b"\x89PNG\r\n\x1a\nSoftware\x00matplotlib",
                            "html": b"<!doctype html><title>their page</title>"}[kind])
    before = tree(tmp_path)
    one_line(runner.invoke(app, [*make(stem), "-w", str(tmp_path / "ws")]), f"--out {target}")
    assert tree(tmp_path) == before


def test_out_replaces_what_mmvid_wrote_there_before(tiny_run, tmp_path):
    """A second run of the same command with the same --out replaces its own files, as before."""
    ws = tiny_run.parent.parent
    out = tmp_path / "rob"
    for _ in range(2):
        res = runner.invoke(app, ["robustness", str(tiny_run), "--drop", "audio", "--out", str(out), "-w", str(ws)])
        assert res.exit_code == 0, res.output
    assert (out / "robustness.json").is_file()
    for _ in range(2):
        res = runner.invoke(app, ["visualize", "curves", str(tiny_run), "--out", str(tmp_path / "fig"), "-w", str(ws)])
        assert res.exit_code == 0, res.output
    from mmvid.workspace import written_by_mmvid

    assert written_by_mmvid(tmp_path / "fig.png") and written_by_mmvid(tmp_path / "fig.svg")


def test_a_comparison_of_runs_given_by_path_goes_to_the_workspace(tiny_run, tmp_path):
    """Several runs compared: comparisons/ of the command's workspace, not a folder beside the runs."""
    elsewhere = tmp_path / "elsewhere" / "runs"
    shutil.copytree(tiny_run, elsewhere / "a")
    shutil.copytree(tiny_run, elsewhere / "b")
    ws = tmp_path / "ws"
    res = runner.invoke(app, ["robustness", str(elsewhere / "a"), str(elsewhere / "b"), "--drop", "audio", "-w", str(ws)])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "elsewhere" / "comparisons").exists()
    (found,) = (ws / "comparisons").iterdir()
    assert (found / "robustness.json").is_file()


def test_curves_of_a_folder_mmvid_did_not_write_never_replace_its_figures(tiny_run, tmp_path):
    """`visualize curves` reads any folder's metrics.jsonl (it loads no checkpoint); into a folder that is not an
    mmvid run it writes figures/curves.* only where no file of someone else's is."""
    theirs = tmp_path / "theirs"
    (theirs / "figures").mkdir(parents=True)
    shutil.copy(tiny_run / "metrics.jsonl", theirs / "metrics.jsonl")
    (theirs / "figures" / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\ntheir figure")
    before = tree(theirs)
    one_line(runner.invoke(app, ["visualize", "curves", str(theirs), "-w", str(tmp_path / "ws")]),
             f"the figure {theirs / 'figures' / 'curves.png'} exists and was not written by mmvid")
    assert tree(theirs) == before


def test_a_cache_given_by_its_path_still_works(tiny_ws, tmp_path):
    """--dataset takes the path of a .h5 cache (documented); its file name must be a plain name (it names runs)."""
    from mmvid.data.cache_lookup import resolve_cache

    ws = tmp_path / "ws"
    mine = tmp_path / "elsewhere" / "mine.h5"
    mine.parent.mkdir()
    shutil.copy(tiny_ws / "caches" / "demo.h5", mine)
    assert resolve_cache(ws, str(mine)) == mine.resolve()
    odd = tmp_path / "elsewhere" / "my cache.h5"
    shutil.copy(mine, odd)
    with pytest.raises(MmvidError, match="the name of cache file .*my cache.h5='my cache' is not valid"):
        resolve_cache(ws, str(odd))
    with pytest.raises(MmvidError, match="no cache file at ../x.h5"):
        resolve_cache(ws, "../x.h5")
