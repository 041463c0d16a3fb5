"""The CLI as a user meets it: help texts, bad options, missing files -> one clear line, non-zero exit."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from mmvid.cli import app

runner = CliRunner()
COMMANDS = ["prepare", "train", "evaluate", "robustness", "visualize", "report", "demo"]


def test_top_level_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in COMMANDS:
        assert cmd in res.output


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_help_has_an_example(cmd):
    res = runner.invoke(app, [cmd, "--help"])
    assert res.exit_code == 0
    assert "Example" in res.output and f"mmvid {cmd}" in res.output


def test_help_does_not_import_torch():
    code = "import sys; from mmvid.cli import app; assert 'torch' not in sys.modules and 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _clean_error(res, *needles):
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    for n in needles:
        assert n in res.output, res.output


def test_unknown_dataset(tmp_path):
    _clean_error(runner.invoke(app, ["prepare", "imagenet", "-w", str(tmp_path)]), "unknown dataset", "demo")


def test_train_without_cache(tmp_path):
    _clean_error(runner.invoke(app, ["train", "-w", str(tmp_path)]), "no prepared cache", "mmvid prepare")


def test_train_unknown_fusion_lists_choices(tiny_ws):
    _clean_error(runner.invoke(app, ["train", "-w", str(tiny_ws), "--fusion", "nope"]), "unknown fusion 'nope'", "concat")


def test_train_bad_config_value(tiny_ws):
    _clean_error(runner.invoke(app, ["train", "-w", str(tiny_ws), "--set", "epochs=many"]), "epochs", "integer")
    _clean_error(runner.invoke(app, ["train", "-w", str(tiny_ws), "--set", "model.fusionn=concat"]), "unknown config key")
    _clean_error(runner.invoke(app, ["train", "-w", str(tiny_ws), "--amp", "fp8"]), "amp", "bf16")


def test_missing_recipe(tiny_ws):
    _clean_error(runner.invoke(app, ["train", "-w", str(tiny_ws), "--recipe", "no/such.yaml"]), "recipe", "not found")


def test_bad_typed_option_is_a_usage_error(tmp_path):
    _clean_error(runner.invoke(app, ["train", "-w", str(tmp_path), "--epochs", "ten"]), "--epochs", "integer")


def test_evaluate_without_runs(tmp_path):
    _clean_error(runner.invoke(app, ["evaluate", "-w", str(tmp_path)]), "no runs", "mmvid train")


def test_evaluate_missing_run(tiny_ws):
    _clean_error(runner.invoke(app, ["evaluate", "nosuchrun", "-w", str(tiny_ws)]), "nosuchrun", "not found")


def test_evaluate_folder_without_checkpoint(tmp_path):
    (tmp_path / "emptyrun").mkdir()
    _clean_error(runner.invoke(app, ["evaluate", str(tmp_path / "emptyrun"), "-w", str(tmp_path)]), "no checkpoint")


def test_prepare_info_of_missing_cache(tmp_path):
    _clean_error(runner.invoke(app, ["prepare", "demo", "--info", "-w", str(tmp_path)]), "not found")


def test_train_list_shows_registries():
    res = runner.invoke(app, ["train", "--list"])
    assert res.exit_code == 0
    for word in ("fusion", "concat", "augmentation", "bmm", "mm", "balancer", "none"):
        assert word in res.output


@pytest.mark.parametrize("args, needle", [
    (["train", "--seed", "abc"], "--seed"),
    (["train", "--nope"], "--nope"),
    (["prepare"], "dataset"),
    (["evaluate", "--split"], "--split"),
    (["bogus"], "bogus"),
])
def test_usage_errors_of_the_program_are_one_line(args, needle):
    """What the ``mmvid`` program (``mmvid.cli:main``) prints for Click's own usage errors: one line, exit 2."""
    proc = subprocess.run([sys.executable, "-m", "mmvid.cli", *args], capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
