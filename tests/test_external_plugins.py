"""Plug-ins from outside mmvid (``--plugin FILE``, a recipe's ``plugins:``): a balancer written in a user's
own file trains through the CLI, its settings are checked like mmvid's own, the run records the file and
its SHA-256, and every command that loads the run needs it given again (missing, changed or not given:
one line, never a traceback). Every command runs in its own process, as a user runs it, so that nothing
imported here leaks into the other tests.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

PLUGIN = '''\
from dataclasses import dataclass

from mmvid.balance.base import Balancer
from mmvid.registry import BALANCERS
from mmvid.schema import spec


@BALANCERS.register("loss-scale", doc="Scales the training loss by a constant.")
class LossScale(Balancer):
    @dataclass
    class Settings:
        factor: float = spec(1.0, gt=0, le=10, help="loss multiplier")

    def loss(self, loss, out, inputs, y, ctx):
        return loss * self.settings.factor
'''
TRAIN = ["--recipe", "demo", "--epochs", "1", "--device", "cpu", "--encoder", "small", "--batch-size", "16"]


def mmvid(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "mmvid.cli", *args], env={**env, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
                          cwd=cwd, capture_output=True, text=True, timeout=600)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """The message of a command that failed as a user error: exit 2, one line, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout[-1500:], done.stderr[-1500:])
    assert "Traceback" not in done.stderr + done.stdout
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mine") / "loss_scale.py"
    path.write_text(PLUGIN)
    return path


@pytest.fixture(scope="module")
def run(tiny_ws, plugin) -> Path:
    """One epoch of the user's balancer, trained through the CLI with --plugin FILE."""
    done = mmvid("train", "-w", str(tiny_ws), *TRAIN, "--plugin", str(plugin), "--balance", "loss-scale",
                 "--set", "balance.args.factor=0.5", "--run-name", "ext-plugin")
    assert done.returncode == 0, done.stderr[-2000:]
    return tiny_ws / "runs" / "ext-plugin"


def test_a_run_trained_with_a_plugin_file_records_its_path_and_hash(run, plugin):
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["balance"] == {"name": "loss-scale", "args": {"factor": 0.5}}
    assert cfg["plugins"] == [str(plugin.resolve())]
    assert cfg["plugin_sha256"] == {str(plugin.resolve()): hashlib.sha256(plugin.read_bytes()).hexdigest()}


def test_evaluate_without_the_plugin_is_one_line_and_with_it_works(run, plugin):
    line = one_line_error(mmvid("evaluate", str(run)))
    assert str(plugin.resolve()) in line and f"--plugin {plugin.resolve()}" in line
    assert not (run / "eval_test.json").exists()  # nothing ran
    done = mmvid("evaluate", str(run), "--plugin", str(plugin))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (run / "eval_test.json").exists()


def test_robustness_and_visualize_of_the_run_need_the_plugin_too(run, plugin):
    for command in (["robustness", str(run), "--drop", "audio"], ["visualize", "confusion", str(run)]):
        assert str(plugin.resolve()) in one_line_error(mmvid(*command))


def test_a_changed_plugin_file_is_one_line_and_accepted_when_given_again(run, plugin):
    original = plugin.read_text()
    plugin.write_text(original + "\n# edited after training\n")
    try:
        line = one_line_error(mmvid("evaluate", str(run)))
        assert "changed since the run was trained" in line and str(plugin.resolve()) in line
        done = mmvid("evaluate", str(run), "--plugin", str(plugin))  # the user accepts the new file
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        plugin.write_text(original)


def test_a_missing_plugin_file_is_one_line(run, plugin, tmp_path):
    moved = tmp_path / "elsewhere.py"
    plugin.rename(moved)
    try:
        line = one_line_error(mmvid("evaluate", str(run)))
        assert "missing" in line and str(plugin.resolve()) in line
        # the same content under another path is the same plug-in (its hash matches)
        done = mmvid("evaluate", str(run), "--plugin", str(moved))
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        moved.rename(plugin)
    line = one_line_error(mmvid("train", "-w", str(run.parent.parent), *TRAIN, "--plugin", str(tmp_path / "nope.py")))
    assert "nope.py" in line and "not found" in line


def test_a_plugin_setting_is_checked_like_mmvids_own(tiny_ws, plugin):
    line = one_line_error(mmvid("train", "-w", str(tiny_ws), *TRAIN, "--plugin", str(plugin), "--balance", "loss-scale",
                                "--set", "balance.args.factr=0.5"))
    assert "factr" in line and "factor" in line
    line = one_line_error(mmvid("train", "-w", str(tiny_ws), *TRAIN, "--plugin", str(plugin), "--balance", "loss-scale",
                                "--set", "balance.args.factor=50"))
    assert "factor" in line and "10" in line


def test_a_recipe_names_its_plugins(tiny_ws, plugin, tmp_path):
    (tmp_path / "loss_scale.py").write_text(PLUGIN)  # beside the recipe: a relative name is found there
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(yaml.safe_dump({"extends": "demo", "plugins": ["loss_scale.py"],
                                      "balance": {"name": "loss-scale", "args": {"factor": 2.0}}}))
    base = ("train", "-w", str(tiny_ws), *TRAIN[2:], "--recipe", str(recipe), "--run-name", "ext-recipe")
    # A recipe (perhaps someone else's) runs no code by itself: its plug-in must be given with --plugin too.
    line = one_line_error(mmvid(*base))
    assert "the recipe names plug-in file" in line and f"--plugin {(tmp_path / 'loss_scale.py').resolve()}" in line
    assert not (tiny_ws / "runs" / "ext-recipe").exists()
    done = mmvid(*base, "--plugin", str(tmp_path / "loss_scale.py"))
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = yaml.safe_load((tiny_ws / "runs" / "ext-recipe" / "config.yaml").read_text())
    assert cfg["plugins"] == [str((tmp_path / "loss_scale.py").resolve())]
    assert cfg["balance"]["args"] == {"factor": 2.0}


def test_two_gloo_ranks_import_the_plugin(tiny_ws, plugin):
    done = mmvid("train", "-w", str(tiny_ws), *TRAIN, "--batch-size", "8", "--gpus", "2", "--plugin", str(plugin),
                 "--balance", "loss-scale", "--run-name", "ext-ddp")
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = yaml.safe_load((tiny_ws / "runs" / "ext-ddp" / "config.yaml").read_text())
    assert cfg["gpus"] == 2 and cfg["plugins"] == [str(plugin.resolve())]


def test_a_two_run_sweep_of_a_recipe_with_a_plugin(tiny_ws, tmp_path):
    """The sweep's train commands carry the recipe's plug-in (--plugin, absolute path): both runs train with it."""
    (tmp_path / "loss_scale.py").write_text(PLUGIN)
    (tmp_path / "scaled.yaml").write_text(yaml.safe_dump({"extends": "demo", "plugins": ["loss_scale.py"],
                                                          "balance": {"name": "loss-scale", "args": {"factor": 0.5}}}))
    sets = ["--set", "model.encoder=small", "--set", "device=cpu", "--set", "data.batch_size=16"]
    args = ["sweep", str(tmp_path), "-w", str(tiny_ws), "--seeds", "2", "--epochs", "1", "--dataset", "demo", *sets,
            "--plugin", str(tmp_path / "loss_scale.py")]
    plan = mmvid(*args, "--dry-run")
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert plan.stdout.count(f"--plugin {(tmp_path / 'loss_scale.py').resolve()}") == 2
    done = mmvid(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in (tiny_ws / "runs").iterdir() if "scaled" in r.name and r.name.startswith("sweep-")]
    assert len(runs) == 2
    for run in runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert cfg["plugins"] == [str((tmp_path / "loss_scale.py").resolve())] and cfg["balance"]["args"] == {"factor": 0.5}


def test_an_installed_package_registers_through_the_entry_point_group(tiny_ws, tmp_path):
    """A distribution on the path that declares ``[mmvid.plugins]`` is imported without --plugin, and its runs
    record the module (loading them elsewhere needs the package installed)."""
    (tmp_path / "mine_pkg.py").write_text(PLUGIN)
    info = tmp_path / "mine_pkg-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mine-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mmvid.plugins]\nloss-scale = mine_pkg\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)])}
    env.pop("MMVID_PLUGINS", None)
    done = subprocess.run([sys.executable, "-m", "mmvid.cli", "train", "-w", str(tiny_ws), *TRAIN, "--balance",
                           "loss-scale", "--run-name", "ext-entry-point"], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run = tiny_ws / "runs" / "ext-entry-point"
    assert yaml.safe_load((run / "config.yaml").read_text())["plugins"] == ["mine_pkg"]
    line = one_line_error(mmvid("evaluate", str(run)))  # without the package on the path
    assert "'mine_pkg'" in line and "not installed" in line


def test_torchrun_ranks_import_the_plugin(tiny_ws, plugin):
    """``torchrun -m mmvid.cli train --plugin FILE``: every rank imports the file given on its command line."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "mmvid.cli",
                           "train", "-w", str(tiny_ws), *TRAIN, "--batch-size", "8", "--plugin", str(plugin),
                           "--balance", "loss-scale", "--run-name", "ext-torchrun"],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = yaml.safe_load((tiny_ws / "runs" / "ext-torchrun" / "config.yaml").read_text())
    assert cfg["plugins"] == [str(plugin.resolve())] and cfg["balance"]["name"] == "loss-scale"


def test_resume_report_and_diagnose_of_the_run_need_the_plugin(run, plugin):
    assert str(plugin.resolve()) in one_line_error(mmvid("diagnose", str(run)))
    assert str(plugin.resolve()) in one_line_error(mmvid("train", "--resume", str(run)))
    assert str(plugin.resolve()) in one_line_error(mmvid("report", str(run), "--no-umap", "--no-robustness"))


def test_a_recipe_given_by_a_relative_path_finds_its_plugin_file(tiny_ws, plugin, tmp_path):
    """A recipe's plug-in file is named relative to the recipe's folder, and the recipe itself may be named
    relative to the working folder: both resolve to the file --plugin gives."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "loss_scale.py").write_text(PLUGIN)
    recipe = yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text())
    (folder / "scaled.yaml").write_text(yaml.safe_dump({**recipe, "plugins": ["loss_scale.py"],
                                                        "balance": {"name": "loss-scale"}}))
    done = mmvid("train", "-w", str(tiny_ws), "--recipe", "mine/scaled.yaml", "--plugin", "mine/loss_scale.py",
                 "--epochs", "1", "--device", "cpu", "--encoder", "small", "--batch-size", "16",
                 "--run-name", "relative-recipe", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    cfg = yaml.safe_load((tiny_ws / "runs" / "relative-recipe" / "config.yaml").read_text())
    assert cfg["plugins"] == [str((folder / "loss_scale.py").resolve())]
