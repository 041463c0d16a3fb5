"""Model selection protocols (``protocol: clean | reference``, docs/methods.md "Reference protocol").

clean (the default) holds a validation split out of train and reports the last and the best-validation epoch.
reference does what OGM-GE (main.py: ``if acc > best_acc`` over the test loader) and Data Remixing
(baseline.py, the same) do: every training clip trains, test is evaluated after every epoch, and the best
*test* epoch is reported, labelled "selected on test" wherever it appears. The sweep tables put both
protocols' figures beside the paper's; these tests read each run's metrics.jsonl themselves and compare.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.config import RECIPES, read_recipe, resolve_config
from mmvid.errors import MmvidError
from mmvid.sweeps.command import sweep_command
from mmvid.sweeps.plan import plan_sweep

QUIET = Console(quiet=True)
TINY = {"model.encoder": "small", "model.width": 8, "data.batch_size": 16}
SELECTED = "selected on test, as the reference code does"
runner = CliRunner()


def metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def first_best(recs: list[dict], key: str) -> dict:
    """The epoch the reference code keeps: the first of the highest ``key`` (``if acc > best_acc``)."""
    top = max(r[key] for r in recs)
    return next(r for r in recs if r[key] == top)


# ----------------------------------------------------------------------------- one run


@pytest.fixture(scope="module")
def reference_run(tiny_ws) -> tuple[Path, str]:
    from mmvid.workflows import run_train

    said = Console(file=io.StringIO(), width=400)
    run = run_train(said, tiny_ws, "demo", {**TINY, "protocol": "reference", "epochs": 4, "device": "cpu",
                                            "run_name": "protocol-reference"}, progress=False)
    return run, " ".join(said.file.getvalue().split())


def test_reference_trains_on_every_train_clip_and_evaluates_test_every_epoch(tiny_ws, reference_run):
    from mmvid.data.cache import read_info
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.workspace import CKPT_LAST

    run, said = reference_run
    info = read_info(tiny_ws / "caches" / "demo.h5")
    train = info.indices("train")
    ck = load_checkpoint(run / CKPT_LAST)
    assert len(info.indices("val")) == 0 and len(train) == 40  # the demo cache has no val split of its own
    assert np.array_equal(ck["splits"]["train"].numpy(), train)  # every training clip, not 90 % of them
    assert len(ck["splits"]["val"]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["protocol"] == "reference" and saved["data"]["val_fraction"] == 0.0  # the recipe's 0.1 is not used
    assert "note: protocol reference: every training clip trains (data.val_fraction=0.1 is not used)" in said
    recs = metrics(run)
    assert [r["epoch"] for r in recs] == [0, 1, 2, 3]
    assert all("test_acc" in r and "val_acc" not in r for r in recs)


def test_reference_best_is_the_argmax_of_test_accuracy_and_labelled_selected_on_test(reference_run):
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.results.evaluation import checkpoint_note, evaluate_run
    from mmvid.results.report import best_epoch_words
    from mmvid.workspace import CKPT_BEST

    run, said = reference_run
    recs = metrics(run)
    best = first_best(recs, "test_acc")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["protocol"] == "reference"
    assert summary["best"] == {"test_acc": best["test_acc"], "epoch": best["epoch"], "selected_on": "test"}
    assert load_checkpoint(run / CKPT_BEST)["epoch"] == best["epoch"]
    # the run's summary line, evaluate's checkpoint note and the report each say how it was chosen
    assert f"best-test epoch ({SELECTED})" in said or f"at the best-test epoch ({best['epoch'] + 1}, {SELECTED})" in said
    result = evaluate_run(run, device="cpu")
    assert result["accuracy"] == pytest.approx(best["test_acc"], abs=1e-9)
    assert checkpoint_note(result) == f"best-test checkpoint (epoch {best['epoch'] + 1}; {SELECTED})"
    assert best_epoch_words(summary) == f"best-test epoch {best['epoch'] + 1} ({SELECTED})"


def test_best_epoch_is_the_first_of_the_highest_test_accuracy_whatever_the_figures(tiny_ws, monkeypatch):
    """The selection itself, on scripted per-epoch accuracies (a tie, a later drop): the best epoch is the first
    of the highest test accuracy, as ``if acc > best_acc``, and checkpoint_best.pt is that epoch's."""
    from mmvid.config import resolve_config
    from mmvid.engine import loop
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.engine.loop import train
    from mmvid.workspace import CKPT_BEST

    script = [0.30, 0.65, 0.65, 0.40]
    real = loop.evaluate_epoch

    def scripted(ctx, loaders, *args, **kwargs):
        rec = real(ctx, loaders, *args, **kwargs)
        if "test_acc" in rec:
            rec["test_acc"] = script[ctx.epoch]
        return rec

    monkeypatch.setattr(loop, "evaluate_epoch", scripted)
    cfg = resolve_config("demo", {**TINY, "protocol": "reference", "epochs": 4, "device": "cpu", "monitor_train": 0})
    run = tiny_ws / "runs" / "protocol-scripted"
    summary = train(cfg, tiny_ws / "caches" / "demo.h5", run, progress=False)
    assert [r["test_acc"] for r in metrics(run)] == script
    assert summary["best"] == {"test_acc": 0.65, "epoch": 1, "selected_on": "test"}
    assert summary["last"]["test_acc"] == 0.40
    assert load_checkpoint(run / CKPT_BEST)["epoch"] == 1


def test_clean_protocol_holds_validation_out_and_selects_on_it(tiny_ws, tiny_run):
    from mmvid.data.cache import read_info
    from mmvid.engine.checkpoints import load_checkpoint
    from mmvid.results.evaluation import checkpoint_note, evaluate_run
    from mmvid.workspace import CKPT_BEST

    info = read_info(tiny_ws / "caches" / "demo.h5")
    ck = load_checkpoint(tiny_run / CKPT_BEST)
    assert ck["config"]["protocol"] == "clean" and ck["config"]["data"]["val_fraction"] == 0.1
    n_val = len(ck["splits"]["val"])
    # held out of the 40 training clips (stratified: at least one of each of the 10 classes)
    assert n_val == 10 and len(ck["splits"]["train"]) + n_val == len(info.indices("train")) == 40
    summary = json.loads((tiny_run / "summary.json").read_text())
    recs = metrics(tiny_run)
    best = first_best(recs, "val_acc")
    assert summary["protocol"] == "clean"
    assert summary["best"] == {"val_acc": best["val_acc"], "epoch": best["epoch"], "test_acc": best["test_acc"],
                               "selected_on": "val"}
    assert checkpoint_note(evaluate_run(tiny_run, device="cpu")).startswith("best-validation checkpoint (epoch ")


def test_reference_drops_a_cache_validation_split_too():
    """AVE's caches carry an official val split: clean selects on it, reference trains on train and selects on
    test (as the reference code's train / test loaders)."""
    from mmvid.engine.loaders import make_splits

    split = np.array(["train"] * 8 + ["val"] * 3 + ["test"] * 4)
    info = SimpleNamespace(path="ave.h5", labels=np.arange(15) % 2,
                           indices=lambda name: np.flatnonzero(split == name))
    clean = make_splits(info, 0.1, 0)
    ref = make_splits(info, 0.1, 0, "reference")
    assert (len(clean.train), len(clean.val), len(clean.test)) == (8, 3, 4)
    assert (len(ref.train), len(ref.val), len(ref.test)) == (8, 0, 4)


def test_summary_lines_of_runs_written_before_selected_on_still_read():
    from mmvid.workflows import checkpoints_line

    old_no_val = {"last": {"epoch": 2, "test_acc": 0.5}, "best": {"val_acc": 0.6, "epoch": 1, "test_acc": 0.6}}
    assert checkpoints_line(old_no_val).endswith("60.00% at the best-test epoch (2, no validation split)")
    old_val = {"last": {"epoch": 2, "test_acc": 0.5, "val_acc": 0.4},
               "best": {"val_acc": 0.7, "epoch": 1, "test_acc": 0.6}}
    assert checkpoints_line(old_val).endswith("60.00% at the best-validation epoch (2, val 70.00%)")


# ----------------------------------------------------------------------------- contradictions


@pytest.mark.parametrize("overrides, message", [
    ({"protocol": "reference", "eval_every": 2},
     "config eval_every=2: protocol reference evaluates test after every epoch"),
    ({"protocol": "reference", "data.val_fraction": 0.2},
     "config data.val_fraction=0.2: protocol reference trains on every training clip"),
    ({"protocol": "both"}, "config protocol='both' is not valid; it must be one of: clean, reference"),
])
def test_contradictory_protocol_settings_are_one_line(overrides, message):
    with pytest.raises(MmvidError, match=re.escape(message)) as e:
        resolve_config("demo", overrides)
    assert "\n" not in str(e.value)


def test_reference_overrides_a_recipes_val_fraction_with_a_note():
    notes: list[str] = []
    cfg = resolve_config("cremad", {"protocol": "reference", "data.val_fraction": 0}, notes=notes)
    assert cfg.data.val_fraction == 0.0 and notes == []  # 0 given beside it agrees: nothing to say
    cfg = resolve_config("cremad", {"protocol": "reference"}, notes=notes)
    assert cfg.data.val_fraction == 0.0 and len(notes) == 1 and "data.val_fraction=0.1 is not used" in notes[0]
    assert resolve_config("cremad").data.val_fraction == 0.1  # clean: unchanged


def test_cli_contradictions_and_methods_needing_validation_are_one_line(tmp_path):
    for args, message in (
        (["--protocol", "reference", "--set", "eval_every=3"], "(given by --set eval_every): protocol reference"),
        (["--protocol", "reference", "--set", "data.val_fraction=0.3"], "(given by --set data.val_fraction)"),
        (["--protocol", "reference", "--balance", "gblend"],
         "config protocol=reference holds no validation split out, but balancer 'gblend' estimates on validation "
         "clips of its own; train it under protocol clean"),
    ):
        res = runner.invoke(app, ["train", "--workspace", str(tmp_path), "--recipe", "demo", *args])
        assert res.exit_code == 2, res.output
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in " ".join(res.output.split())


# ----------------------------------------------------------------------------- recipes


def test_the_papers_recipes_state_their_protocol_with_a_reason():
    files = [RECIPES / "paper.yaml", *sorted(RECIPES.glob("table*/*/*.yaml"))]
    assert len(files) == 97
    for f in files:
        text = f.read_text()
        assert "protocol" in yaml.safe_load(text), f  # stated in the file itself, not only inherited
        lines = text.splitlines()
        at = next(i for i, ln in enumerate(lines) if ln.startswith("protocol:"))
        assert lines[at].split("#")[0].split(":")[1].strip() == "clean"
        above = []  # the comment on the line, else the block of comment lines just above it
        for ln in reversed(lines[:at]):
            if not ln.startswith("#"):
                break
            above.append(ln)
        comment = lines[at].split("#", 1)[1] if "#" in lines[at] else " ".join(above)
        assert "on test" in comment and "--protocol both" in comment, f  # why clean, and the other one flag away
        assert resolve_config(read_recipe(f).config).protocol == "clean"


# ----------------------------------------------------------------------------- sweeps


def test_protocol_plan_names_runs_by_protocol_and_keeps_clean_names():
    plain = plan_sweep(["recipes/table2/cremad"], seeds=2)
    both = plan_sweep(["recipes/table2/cremad"], seeds=2, protocol="both")
    assert both.name == "table2-cremad-clean_reference" and "--protocol clean,reference" in both.options
    clean = [r.name for r in both.runs if r.config.protocol == "clean"]
    assert clean == [r.name for r in plain.runs]  # a clean run keeps its name: earlier sweeps' runs are reused
    ref = [r for r in both.runs if r.config.protocol == "reference"]
    assert ref[0].name == "sweep-table2-cremad-concat-reference-s0"
    assert all(r.config.data.val_fraction == 0.0 and r.overrides["protocol"] == "reference" for r in ref)
    # G-Blend estimates its weights on a validation split of its own: it has no reference run, and says so
    assert not any("gblend" in r.name for r in ref) and len(ref) == 2 * 8
    assert both.skipped == ["table2-cremad-gblend has no protocol reference run: balancer 'gblend' estimates on "
                            "validation clips of its own"]
    assert plan_sweep(["recipes/table1/cremad"], seeds=1, protocol="reference,clean").name == "table1-cremad-clean_reference"
    with pytest.raises(MmvidError, match=r"^--protocol 'val' is not valid; choose clean, reference, clean,reference or both$"):
        plan_sweep(["recipes/table1/cremad"], protocol="val")


def test_protocol_dry_run_trains_reference_runs_with_the_protocol(tmp_path):
    console = Console(record=True, width=400)
    sweep_command(console, tmp_path, ["recipes/table1/cremad"], seeds=1, only="concat", protocol="both", dry_run=True)
    lines = [ln for ln in console.export_text().splitlines() if ln.strip()]
    assert len(lines) == 2
    assert lines[0].endswith("--run-name sweep-table1-cremad-concat-s0 --set protocol=clean --seed 0")
    assert lines[1].endswith("--run-name sweep-table1-cremad-concat-reference-s0 --set protocol=reference --seed 0")


QUICK = dict(seeds=1, quick=True, epochs=3, dataset="demo", sets=TINY, only="concat", progress=False)


@pytest.fixture(scope="module")
def reference_sweep(tiny_ws):
    """``--quick`` over Table 1's Concat row under protocol reference, 1 seed, 3 epochs."""
    files = sweep_command(QUIET, tiny_ws, ["recipes/table1/cremad"], protocol="reference", **QUICK)
    return tiny_ws, files[0].parent


def test_quick_reference_sweep_best_test_column_is_the_max_of_each_runs_test_accuracy(reference_sweep):
    ws, out = reference_sweep
    with (out / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    plan = json.loads((out / "sweep.json").read_text())
    assert [(r["row"], r["protocol"], r["best_selected_on"]) for r in rows] == [("Concat", "reference", "test")]
    for r in rows:
        (cell,) = [c for c in plan["cells"] if c["row"] == r["row"]]
        assert cell["protocol"] == "reference" and cell["run"].endswith("-reference-s0")
        recs = metrics(ws / "runs" / cell["run"])  # read independently of the sweep's own reading
        assert len(recs) == 3 and all("val_acc" not in x for x in recs)
        assert float(r["best_mean"]) == pytest.approx(100 * max(x["test_acc"] for x in recs), abs=1e-4)
        assert float(r["last_mean"]) == pytest.approx(100 * recs[-1]["test_acc"], abs=1e-4)
        # trained on the demo set, not on the published figure's CREMA-D: no difference to the paper's figure
        assert (r["dataset"], r["paper_dataset"], r["diff_best"]) == ("demo", "cremad", "")
    md = (out / "table.md").read_text()
    assert f"## Table 1: best-test epoch ({SELECTED}) (protocol reference)" in md
    assert "## Table 1: last epoch (protocol reference)" in md
    assert "| reference: last / best-test (selected on test) |" in md
    assert "clean: last" not in md  # no clean runs in this sweep: no clean column


def test_both_protocols_sweep_shows_both_columns_beside_the_paper(reference_sweep):
    ws, ref_out = reference_sweep
    plan = json.loads((ref_out / "sweep.json").read_text())
    stamps = {c["run"]: (ws / "runs" / c["run"] / "metrics.jsonl").stat().st_mtime_ns for c in plan["cells"]}
    files = sweep_command(QUIET, ws, ["recipes/table1/cremad"], protocol="both", **QUICK)
    out = files[0].parent
    assert out.name.endswith("-clean_reference")
    # the reference runs of the first sweep are reused, not retrained
    assert stamps == {n: (ws / "runs" / n / "metrics.jsonl").stat().st_mtime_ns for n in stamps}
    with (out / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row"], r["protocol"], r["best_selected_on"]) for r in rows] == [("Concat", "clean", "val"),
                                                                                ("Concat", "reference", "test")]
    plan = json.loads((out / "sweep.json").read_text())
    for r in rows:
        (cell,) = [c for c in plan["cells"] if c["row"] == r["row"] and c["protocol"] == r["protocol"]]
        recs = metrics(ws / "runs" / cell["run"])
        key = "val_acc" if r["protocol"] == "clean" else "test_acc"
        assert float(r["best_mean"]) == pytest.approx(100 * first_best(recs, key)["test_acc"], abs=1e-4)
    md = (out / "table.md").read_text()
    header = ("|  | column | data set | paper | clean: last / best-val | reference: last / best-test (selected on test) "
              "| Δ vs paper (from) |")
    assert header in md
    ref = {r["row"]: r for r in rows if r["protocol"] == "reference"}
    clean = next(r for r in rows if r["protocol"] == "clean")
    line = next(ln for ln in md.splitlines() if ln.startswith("| Concat | CREMA-D | demo | 60.62 |"))
    # both protocols' last / best figures side by side; the runs used the demo set, so no Δ against the paper's
    # CREMA-D figure (tests/test_sweep_stats.py checks the Δ of runs on the figure's own data set)
    figures = " | ".join(f"{float(r['last_mean']):.2f} / {float(r['best_mean']):.2f}" for r in (clean, ref["Concat"]))
    assert line == f"| Concat | CREMA-D | demo | 60.62 | {figures} | none: the figure is on cremad |"
    assert "the Δ beside each row is computed against the reference protocol's best-test figure" in md
    for heading in ("last epoch (protocol clean)", "best-validation epoch (protocol clean)",
                    "last epoch (protocol reference)", f"best-test epoch ({SELECTED}) (protocol reference)"):
        assert f"## Table 1: {heading}" in md
    assert (out / "table.png").stat().st_size > 1000 and (out / "table.svg").exists()
    svg = (out / "table.svg").read_text()
    assert "reference: best-test (selected on test)" in svg and "clean: best-val" in svg
