"""The Python API (``import mmvid``): the same functions the CLI calls, with the CLI's option names and dotted
config keys; a :class:`mmvid.Run` to read a run back; every error one :class:`mmvid.MmvidError` carrying the
CLI's one line; a plug-in defined in a notebook cell trains in the notebook's process, and where other processes
would need it (``gpus=2``, a sweep) one line says how to put it in a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from test_external_plugins import PLUGIN

import mmvid
from mmvid import MmvidError

REPO = Path(__file__).resolve().parent.parent
FAST = dict(recipe="demo", epochs=1, encoder="small", batch_size=16, device="cpu", quiet=True, progress=False)
CLI_FAST = ["--recipe", "demo", "--epochs", "1", "--encoder", "small", "--batch-size", "16", "--device", "cpu"]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "mmvid.cli", *args], env={**env, "PYTHONPATH": str(REPO), "COLUMNS": "400"},
                          capture_output=True, text=True, timeout=600)


def cli_error(*args: str) -> str:
    done = cli(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-1500:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, done.stderr
    return lines[0].removeprefix("error: ")


def python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``code`` run as a notebook runs a cell: ``__main__`` without a file (``python -c``)."""
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env={**env, "PYTHONPATH": str(REPO)},
                          cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def api_run(tiny_ws):
    return mmvid.train(workspace=tiny_ws, run_name="api-ogm", balance="ogm-ge", **FAST,
                       **{"balance.args.alpha": 0.5, "optim.weight_decay": 0.001})


def test_train_returns_a_run_with_its_config_metrics_checkpoints(api_run, tiny_ws):
    assert isinstance(api_run, mmvid.Run) and api_run.path == tiny_ws / "runs" / "api-ogm"
    cfg = api_run.config
    assert (cfg.epochs, cfg.model.encoder, cfg.data.batch_size, cfg.balance.name) == (1, "small", 16, "ogm-ge")
    assert cfg.balance.args["alpha"] == 0.5 and cfg.optim.weight_decay == 0.001
    assert len(api_run.metrics) == 1 and api_run.metrics[0]["epoch"] == 0
    assert api_run.summary["epochs"] == 1
    assert set(api_run.checkpoints) == {"best", "last"} and all(p.is_file() for p in api_run.checkpoints.values())
    assert mmvid.Run.load("api-ogm", workspace=tiny_ws) == api_run


def test_the_api_and_the_cli_write_the_same_config(api_run, tiny_ws):
    done = cli("train", "-w", str(tiny_ws), *CLI_FAST, "--run-name", "cli-ogm", "--balance", "ogm-ge",
               "--set", "balance.args.alpha=0.5", "--set", "optim.weight_decay=0.001")
    assert done.returncode == 0, done.stderr[-2000:]
    by_cli = yaml.safe_load((tiny_ws / "runs" / "cli-ogm" / "config.yaml").read_text())
    by_api = yaml.safe_load((api_run.path / "config.yaml").read_text())
    assert by_cli.pop("run_name") == "cli-ogm" and by_api.pop("run_name") == "api-ogm"
    assert by_cli == by_api


def test_evaluate_gives_what_the_cli_prints_as_json(api_run, tiny_ws):
    mine = mmvid.evaluate(api_run)
    done = cli("evaluate", str(api_run.path), "--json", "-w", str(tiny_ws))
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = json.loads(done.stdout)
    for key in ("accuracy", "macro_f1", "confusion", "modality_accuracy", "rho", "checkpoint", "checkpoint_epoch"):
        assert mine[key] == theirs[key], key
    assert api_run.evaluate(split="test", checkpoint="last")["checkpoint"] == "last"


def test_robustness_visualize_and_report_of_a_run(api_run, tmp_path):
    """Each writes into this module's own run (the session's tiny run is shared with tests that compare its files)."""
    rob = mmvid.robustness(api_run, drop="audio", out=tmp_path / "rob")
    assert [c["name"] for c in rob["conditions"]] and len(rob["runs"]) == 1
    assert (tmp_path / "rob" / "robustness.csv").is_file() and any(f.endswith(".png") for f in rob["files"])
    paths = mmvid.visualize("curves", api_run)  # into the run's figures/
    assert {p.suffix for p in paths} == {".png", ".svg"} and all(p.is_file() for p in paths)
    assert set(paths) <= set(api_run.figures)
    page = mmvid.report(api_run, umap=False, robustness=False, out=tmp_path / "r.html")
    assert page.read_text().startswith("<!DOCTYPE html>") or "<html" in page.read_text()[:500]


def test_diagnose_a_run_returns_its_diagnosis(api_run, tmp_path):
    diag = mmvid.diagnose(api_run, alone=False, out=tmp_path / "diag", quiet=True)
    assert set(diag["shapley"]) and (tmp_path / "diag" / "diagnosis.json").is_file()
    assert json.loads((tmp_path / "diag" / "diagnosis.json").read_text())["shapley"] == diag["shapley"]


def test_sweep_plans_through_the_api(tiny_ws):
    files = mmvid.sweep(REPO / "recipes" / "table1" / "cremad", workspace=tiny_ws, seeds=2, dry_run=True,
                        dataset="demo", quiet=True, **{"model.encoder": "small"})
    assert files == []


def test_prepare_takes_the_cli_option_names_and_parameter_names(tmp_path):
    cache = mmvid.prepare("demo", workspace=tmp_path, clips=20, frames=4, image_size=32, stft_pad="reflect",
                          quiet=True, progress=False)
    assert cache == tmp_path.resolve() / "caches" / "demo.h5"
    from mmvid.data.cache import read_info

    params = read_info(cache).params
    assert (params["num_frames"], params["image_size"], params["stft_pad"]) == (4, 32, "reflect")


@pytest.mark.parametrize("call, cli_args, swap", [
    (lambda ws: mmvid.train(workspace=ws, balance="ogm-ge", **FAST, **{"balance.args.alpah": 0.5}),
     ["--balance", "ogm-ge", "--set", "balance.args.alpah=0.5"], ("--set balance.args.alpah", "'balance.args.alpah'")),
    (lambda ws: mmvid.train(workspace=ws, **{**FAST, "epochs": 0}), ["--epochs", "0"], ("--epochs", "epochs=")),
    (lambda ws: mmvid.train(workspace=ws, fusion="concatt", **FAST), ["--fusion", "concatt"], ("--fusion", "fusion=")),
])
def test_errors_are_mmvid_errors_with_the_clis_line(tiny_ws, call, cli_args, swap):
    with pytest.raises(MmvidError) as e:
        call(tiny_ws)
    line = cli_error("train", "-w", str(tiny_ws), *CLI_FAST, *cli_args)
    assert "\n" not in str(e.value)
    assert str(e.value) == line.replace(*swap)


def test_an_unknown_option_names_the_closest(tiny_ws):
    with pytest.raises(MmvidError, match=r"unknown option 'epoch' \(did you mean 'epochs'\?\)"):
        mmvid.train(workspace=tiny_ws, recipe="demo", epoch=1)
    with pytest.raises(MmvidError, match=r"unknown option 'frame' \(did you mean 'frames'\?\)"):
        mmvid.prepare("demo", workspace=tiny_ws, frame=4)
    with pytest.raises(MmvidError, match="resume= continues a run with its own config; leave out epochs="):
        mmvid.train(workspace=tiny_ws, resume="api-ogm", epochs=3)
    with pytest.raises(MmvidError, match="no-such-run"):
        mmvid.evaluate("no-such-run", workspace=tiny_ws)


# The balancer of tests/test_external_plugins.py, as a user would type it into a notebook cell.
NOTEBOOK_CELL = ("import mmvid\n" + PLUGIN.replace('"loss-scale"', '"cell-scale"').replace("LossScale", "CellScale")
                 + '\nFAST = dict(recipe="demo", epochs=1, encoder="small", batch_size=16, device="cpu", quiet=True, '
                   'progress=False)\n')


def test_a_plugin_from_a_notebook_cell_trains_in_its_process(tiny_ws, tmp_path):
    done = python(NOTEBOOK_CELL + textwrap.dedent(f"""
    run = mmvid.train(workspace={str(tiny_ws)!r}, run_name="cell-run", balance="cell-scale",
                      **{{"balance.args.factor": 0.5}}, **FAST)
    print("ACC", mmvid.evaluate(run)["accuracy"], run.config.balance.args["factor"])
    """), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ACC" in done.stdout and done.stdout.split()[-1] == "0.5"


def test_a_notebook_plugin_with_gpus_2_or_in_a_sweep_is_one_line_saying_how_to_put_it_in_a_file(tiny_ws, tmp_path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "cell.yaml").write_text(yaml.safe_dump({**yaml.safe_load((REPO / "recipes" / "demo.yaml").read_text()),
                                                       "balance": {"name": "cell-scale"}}))
    done = python(NOTEBOOK_CELL + textwrap.dedent(f"""
    for call in (lambda: mmvid.train(workspace={str(tiny_ws)!r}, run_name="cell-2", balance="cell-scale", gpus=2, **FAST),
                 lambda: mmvid.sweep({str(recipes)!r}, workspace={str(tiny_ws)!r}, seeds=1, epochs=1, quiet=True)):
        try:
            call()
        except mmvid.MmvidError as e:
            print("ERR", e)
    """), tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    errors = [ln for ln in done.stdout.splitlines() if ln.startswith("ERR ")]
    assert len(errors) == 2, done.stdout
    assert "balancer 'cell-scale' is defined in a notebook cell, which the 2 processes of gpus=2 cannot import" in errors[0]
    assert "%%writefile cell_scale.py" in errors[0] and "plugins=[\"cell_scale.py\"]" in errors[0]
    assert "the runs of a sweep" in errors[1] and "%%writefile cell_scale.py" in errors[1]
    assert not (tiny_ws / "runs" / "cell-2").exists()


def test_a_notebook_plugin_put_in_a_file_trains_with_gpus_2(tiny_ws, tmp_path):
    """What the line above says to do, done: the cell's class in a file, given with plugins=[...]."""
    body = textwrap.dedent(NOTEBOOK_CELL).split("FAST = ")[0]
    (tmp_path / "cell_scale.py").write_text(body.replace("import mmvid\n", ""))
    done = python(f"""
    import mmvid
    run = mmvid.train(workspace={str(tiny_ws)!r}, run_name="cell-file-2", balance="cell-scale", gpus=2,
                      plugins=["cell_scale.py"], recipe="demo", epochs=1, encoder="small", batch_size=16,
                      device="cpu", quiet=True, progress=False)
    print("EPOCHS", run.summary["epochs"], run.config.plugins)
    """, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "EPOCHS 1" in done.stdout and "cell_scale.py" in done.stdout


def test_evaluate_and_report_show_what_the_run_was_trained_on(api_run, tmp_path):
    """run.json's setup in evaluate's result and table, and in the report's Setup section with the command line."""
    from mmvid.runfiles import read_run_info, session_setup

    entry = read_run_info(api_run.path)["sessions"][0]
    setup = session_setup(entry)
    assert mmvid.evaluate(api_run)["setup"] == [setup]
    done = cli("evaluate", str(api_run.path))
    assert done.returncode == 0 and "trained on" in done.stdout and f"torch {entry['torch']}" in done.stdout
    page = mmvid.report(api_run, umap=False, robustness=False, out=tmp_path / "r.html").read_text()
    assert "<h2>Setup</h2>" in page and setup in page
