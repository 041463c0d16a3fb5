"""The paper-table recipes and ``mmvid sweep``: every recipe validates, the published figures are the paper's,
a --quick sweep on the tiny demo writes the table whose statistics equal those computed here from each run's
metrics, an interrupted sweep resumes without retraining, and --emit slurm sizes its array to the plan."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import shared_data_dir
from rich.console import Console

from mmvid.config import RECIPES, read_recipe, resolve_config
from mmvid.errors import MmvidError
from mmvid.sweeps.command import sweep_command
from mmvid.sweeps.plan import parse_grid, plan_sweep
from mmvid.sweeps.running import train_command
from mmvid.sweeps.state import run_state

REPO = Path(__file__).resolve().parent.parent
T_975 = {2: 4.302652729911275, 3: 3.182446305284263}  # Student's t quantile 0.975 at n - 1 degrees of freedom
QUIET = Console(quiet=True)
TINY = {"model.encoder": "small", "model.width": 8, "data.batch_size": 16}


# ----------------------------------------------------------------------------- recipes


def test_every_recipe_resolves_against_the_schema_and_its_plugins():
    from mmvid.engine.checks import check_plugins

    files = sorted(RECIPES.rglob("*.yaml"))
    assert len(files) > 100
    for f in files:
        # a one-line MmvidError on any bad key or value, or a plug-in refusing the config (as train would)
        check_plugins(resolve_config(read_recipe(f).config))


def test_a_recipe_its_plugins_refuse_fails_before_any_run(tiny_ws, tmp_path):
    (tmp_path / "bad.yaml").write_text("extends: proving\ndata: {dataset: demo}\naugment: {unimodal: head}\n")
    with pytest.raises(MmvidError, match=r"recipe .*bad.yaml: config augment.unimodal=head is a B-MM option"):
        sweep_command(QUIET, tiny_ws, [str(tmp_path / "bad.yaml")], seeds=1, epochs=1)
    assert not list((tiny_ws / "runs").glob("sweep-*bad*"))


TABLE_SHAPES = {1: (11, ["cremad", "kinetics-sounds", "ucf101"]), 2: (9, ["cremad", "kinetics-sounds", "ucf101"]),
                3: (6, ["cremad", "kinetics-sounds"]), 4: (6, ["cremad", "kinetics-sounds"]),
                5: (6, ["cremad", "kinetics-sounds"])}


@pytest.mark.parametrize("table", sorted(TABLE_SHAPES))
def test_table_recipes_cover_the_paper(table):
    rows, datasets = TABLE_SHAPES[table]
    for ds in datasets:
        files = sorted((RECIPES / f"table{table}" / ds).glob("*.yaml"))
        assert len(files) == rows, (table, ds)
        for f in files:
            r = read_recipe(f)
            cfg = resolve_config(r.config)
            assert r.paper["table"] == table and cfg.data.dataset == ds
            assert cfg.epochs == 60 and cfg.data.batch_size == 64 and cfg.model.encoder == "resnet18"
            assert cfg.optim.lr == 1e-3  # the reference value (the paper's lr was lost)
            assert "paper" not in cfg.to_dict()
        if table >= 3:  # the ablated value is the only difference between the columns
            key = {3: "alpha", 4: "warmup", 5: "beta"}[table]
            values = [resolve_config(read_recipe(f).config).augment.args[key] for f in files]
            assert len(set(values)) == 6
            assert all(f.read_text().count("our choice") for f in files)  # the lost grid says so


def _paper_tables() -> dict[str, dict[str, list[float]]]:
    """Table 1 and 2 rows of the paper's text: {table: {row: [CREMA-D, KS, UCF-101]}}."""
    data = shared_data_dir()  # the seeds lie beside the data: <shared>/data, <shared>/seeds
    text = (data.parent if data is not None else REPO.parent / "shared") / "seeds" / "paper-mixup-multimodal-video.txt"
    if not text.exists():
        pytest.skip("the paper's text (../shared/seeds) is not beside the repository")
    tables: dict[str, dict[str, list[float]]] = {}
    current = None
    for line in text.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "Method":  # the header of the next table with a row per method: Table 1, then Table 2
            current = str(len(tables) + 1)
            tables[current] = {}
        elif current and len(cells) == 4 and cells[1].endswith("%"):
            tables[current][cells[0]] = [float(c.rstrip("% ").strip()) for c in cells[1:]]
        elif not line.startswith("|"):
            current = None
    return tables


def test_published_figures_are_the_papers():
    """Table 1 and 2 recipes carry the figures printed in the paper's text (read here from ../shared/seeds)."""
    paper = _paper_tables()
    names = {"Concat": ["Concatenation", "Concat"], "Sum": ["Summation"], "Decision": ["Decision Fusion"],
             "FiLM": ["FiLM"], "Bi-Gated": ["Bi-Gated"]}
    assert len(paper["2"]) == 9, paper["2"]
    cols = {"cremad": 0, "kinetics-sounds": 1, "ucf101": 2}
    checked = 0
    for table in ("1", "2"):
        for f in sorted((RECIPES / f"table{table}").rglob("*.yaml")):
            r = read_recipe(f).paper
            row = r["row"]
            if table == "1":
                parts = row.split(" + ")
                cands = [n + (f" + {parts[1]}" if len(parts) > 1 else "") for n in names[parts[0]]]
                match = [paper["1"][c] for c in cands if c in paper["1"]]
                if not match and row == "Concat":
                    match = [paper["2"]["Concat"]]
                assert match, row
                expected = match[0]
            else:
                expected = paper["2"][row]
            assert r["accuracy"] == expected[cols[f.parent.name]], (f, r, expected)
            checked += 1
    assert checked == 11 * 3 + 9 * 3


def test_extends_merges_sections_and_keeps_paper_local(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {encoder: small, width: 8}\noptim: {lr: 0.01}\n"
                                        "paper: {table: 1, row: base, accuracy: 1.0}\n")
    (tmp_path / "mix.yaml").write_text("augment: {name: mm, alpha: 0.5}\nmodel: {width: 16}\n")
    (tmp_path / "row.yaml").write_text("extends: [base, mix]\noptim: {weight_decay: 0.0}\n"
                                       "paper: {table: 9, row: R, column: C, accuracy: 50.5}\n")
    r = read_recipe(tmp_path / "row.yaml")
    cfg = resolve_config(r.config)
    assert (cfg.model.encoder, cfg.model.width, cfg.optim.lr, cfg.optim.weight_decay) == ("small", 16, 0.01, 0.0)
    assert (cfg.augment.name, cfg.augment.args["alpha"]) == ("mm", 0.5)
    assert r.paper == {"table": 9, "row": "R", "column": "C", "accuracy": 50.5}
    assert read_recipe(tmp_path / "mix.yaml").paper is None
    assert [p.name for p in r.files] == ["base.yaml", "mix.yaml", "row.yaml"]


@pytest.mark.parametrize("text, message", [
    ("extends: row\n", "extends itself"),
    ("extends: no-such-recipe\n", "not found"),
    ("extends: {a: 1}\n", "extends must be a recipe name"),
    ("paper: {table: 1, acc: 3}\n", "unknown paper key 'acc'"),
    ("paper: {accuracy: 120}\n", "percentage"),
    ("paper: {table: [1]}\n", "paper.table=[1] must be a table number or name"),
    ("paper: {row: 3}\n", "paper.row=3 must be a text"),
])
def test_bad_recipe_composition_is_one_line(tmp_path, text, message):
    (tmp_path / "row.yaml").write_text(text)
    with pytest.raises(MmvidError, match=re.escape(message)):
        read_recipe(tmp_path / "row.yaml")


# ----------------------------------------------------------------------------- planning


def test_plan_names_runs_from_recipes_and_marks_overrides():
    plain = plan_sweep(["recipes/table1/cremad"], seeds=3)
    assert len(plain.runs) == 33 and plain.name == "table1-cremad"
    assert plain.runs[0].name == "sweep-table1-cremad-concat-s0" and plain.runs[0].paper == 60.62
    assert [r.row for r in plain.runs[::3]][:3] == ["Concat", "Sum", "Decision"]  # the paper's row order
    both = plan_sweep(["recipes/table1/cremad", "recipes/table2/cremad"], seeds=3)
    assert len(both.runs) == 33 + 27 and len(both.unique) == 33 + 27 - 3 * 3  # Concat, + MM, + B-MM: the same runs
    shared = {(r.table, r.row): r.name for r in both.runs if r.seed == 0}
    assert shared["2", "+ B-MM"] == shared["1", "Concat + B-MM"] == "sweep-table1-cremad-concat-bmm-s0"
    assert shared["2", "+ OGM"] == "sweep-table2-cremad-ogm-ge-s0"
    quick = plan_sweep(["table1/cremad"], seeds=2, quick=True, sets={"model.encoder": "small"}, only="concat,*bmm")
    assert {r.row_id for r in quick.runs} == {"table1-cremad-concat", "table1-cremad-concat-bmm", "table1-cremad-sum-bmm",
                                              "table1-cremad-decision-bmm"}
    assert all(r.config.epochs == 2 and r.config.model.encoder == "small" for r in quick.runs)
    assert "-quick" in quick.runs[0].name and quick.runs[0].name != plain.runs[0].name
    with pytest.raises(MmvidError, match="matches no recipe"):
        plan_sweep(["recipes/table1/cremad"], only="nothing-like-this")
    with pytest.raises(MmvidError, match="--seeds"):
        plan_sweep(["recipes/table1/cremad"], seeds=0)
    with pytest.raises(MmvidError, match="optim.lr"):
        plan_sweep(["recipes/table1/cremad"], sets={"optim.lr": "-1"})


def test_dry_run_prints_every_command(tmp_path):
    console = Console(record=True, width=400)
    sweep_command(console, tmp_path, ["recipes/table2/cremad"], seeds=2, dry_run=True, gpus=2)
    lines = [ln for ln in console.export_text().splitlines() if ln.strip()]
    assert len(lines) == 18
    assert all(re.match(r"CUDA_VISIBLE_DEVICES=[01] mmvid train --workspace \S+ --recipe \S+\.yaml --run-name sweep-\S+ "
                        r"--seed [01]$", ln) for ln in lines), lines
    assert [ln.split("=")[1][0] for ln in lines[:4]] == ["0", "1", "0", "1"]
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_gpus_without_cuda_is_one_line(tmp_path):
    import torch

    if torch.cuda.device_count() >= 64:
        pytest.skip("a machine with 64 GPUs")
    with pytest.raises(MmvidError, match="--gpus 64: this machine has"):
        sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=1, gpus=64, only="concat")


def test_missing_cache_fails_before_any_run(tmp_path):
    with pytest.raises(MmvidError, match=r"no cache for dataset 'cremad' .*; prepare it with `mmvid prepare cremad --root DIR`"):
        sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=1, only="concat")
    assert not (tmp_path / "runs").exists()


def test_emit_slurm_array_matches_the_plan(tmp_path):
    files = sweep_command(QUIET, tmp_path, ["recipes/table1"], seeds=3, emit="slurm")
    script = files[0].read_text()
    n_runs = 11 * 3 * 3
    first, last = map(int, re.search(r"^#SBATCH --array=(\d+)-(\d+)$", script, re.M).groups())
    assert (first, last + 1) == (0, n_runs)
    assert '--task "$SLURM_ARRAY_TASK_ID"' in script and "--seeds 3" in script and "--collect" in script
    assert subprocess.run(["bash", "-n", str(files[0])]).returncode == 0  # the script parses
    plan = json.loads((files[0].parent / "sweep.json").read_text())
    assert len(plan["runs"]) == n_runs and plan["runs"][5]["index"] == 5 and len(plan["cells"]) == n_runs
    with pytest.raises(MmvidError, match="--emit 'pbs'"):
        sweep_command(QUIET, tmp_path, ["recipes/table1"], emit="pbs")


# ----------------------------------------------------------------------------- running on the tiny demo


def _metrics(run: Path) -> list[dict]:
    return [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def _stats(values: list[float]) -> tuple[float, float, float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = T_975[n - 1] * std / math.sqrt(n)
    return mean, std, mean - half, mean + half


@pytest.fixture(scope="module")
def quick_sweep(tiny_ws):
    """``--quick`` over two Table 1 rows (concat, concat + B-MM), 3 seeds, on the tiny demo cache."""
    files = sweep_command(QUIET, tiny_ws, ["recipes/table1/cremad"], seeds=3, quick=True, epochs=2, dataset="demo",
                          sets=TINY, only="concat,concat-bmm", jobs=2, progress=False, baseline="concat")
    return tiny_ws, files


def test_quick_sweep_table_equals_statistics_of_its_runs(quick_sweep):
    ws, files = quick_sweep
    out = files[0].parent
    with (out / "table.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["row"] for r in rows] == ["Concat", "Concat + B-MM"]
    assert {r["column"] for r in rows} == {"CREMA-D"} and all(r["n_seeds"] == "3" for r in rows)
    plan = json.loads((out / "sweep.json").read_text())
    per_seed = {}
    for r in rows:
        runs = [ws / "runs" / c["run"] for c in plan["cells"] if c["row"] == r["row"]]
        assert [c["seed"] for c in plan["cells"] if c["row"] == r["row"]] == [0, 1, 2]
        last, best = [], []
        for run in runs:  # the numbers straight from each run's per-epoch metrics
            m = _metrics(run)
            assert len(m) == 2
            last.append(100 * m[-1]["test_acc"])
            top = max(x["val_acc"] for x in m)
            best.append(100 * next(x for x in m if x["val_acc"] == top)["test_acc"])
        for which, values in (("last", last), ("best", best)):
            mean, std, lo, hi = _stats(values)
            got = [float(r[f"{which}_{k}"]) for k in ("mean", "std", "ci95_lo", "ci95_hi")]
            assert got == pytest.approx([mean, std, lo, hi], abs=1e-4), (r["row"], which)
        # the runs used the demo set, not the published figure's CREMA-D: no difference to the paper's figure
        assert (r["dataset"], r["paper_dataset"], r["diff_last"], r["diff_best"]) == ("demo", "cremad", "", "")
        per_seed[r["row"]] = {"last": last, "best": best}
    assert rows[0]["vs_baseline_last_mean"] == ""  # concat is the baseline
    for which in ("last", "best"):  # --baseline concat: the paired per-seed differences
        diffs = [a - b for a, b in zip(per_seed["Concat + B-MM"][which], per_seed["Concat"][which])]
        mean, _, lo, hi = _stats(diffs)
        got = [float(rows[1][f"vs_baseline_{which}_{k}"]) for k in ("mean", "ci95_lo", "ci95_hi")]
        assert got == pytest.approx([mean, lo, hi], abs=1e-4)
    md = (out / "table.md").read_text()
    assert "## Table 1: last epoch" in md and "## Table 1: best-validation epoch" in md
    # 2 epochs under B-MM's warm-up of 10: B-MM never mixed, and the row says so instead of passing as B-MM's result
    assert [r["never_acted"] for r in rows] == ["", "B-MM never mixed: warm-up 10 >= 2 epochs (3 of 3 runs)"]
    assert "- Concat + B-MM (CREMA-D, protocol clean): B-MM never mixed: warm-up 10 >= 2 epochs (3 of 3 runs)" in md
    assert re.search(r"\| Concat \+ B-MM ⚑ never acted \| [\d.]+ ± [\d.]+ \[[\d.]+, [\d.]+\] · paper 69\.22 on cremad "
                     r"\(no Δ: runs on demo\)", md)
    assert "**No Δ against the paper** where the runs did not use the data set of the published figure" in md
    assert not re.search(r"Δ [+-]\d", md)
    assert "## Table 1: difference to concat, paired by seed" in md
    assert (out / "table.png").stat().st_size > 1000 and (out / "table.svg").exists()


def test_rerun_reuses_finished_runs(quick_sweep):
    ws, files = quick_sweep
    plan = json.loads((files[0].parent / "sweep.json").read_text())
    stamps = {p["name"]: (ws / "runs" / p["name"] / "checkpoint_last.pt").stat().st_mtime_ns for p in plan["runs"]}
    console = Console(record=True, width=300)
    sweep_command(console, ws, ["recipes/table1/cremad"], seeds=3, quick=True, epochs=2, dataset="demo", sets=TINY,
                  only="concat,concat-bmm", jobs=2, progress=False)
    assert stamps == {n: (ws / "runs" / n / "checkpoint_last.pt").stat().st_mtime_ns for n in stamps}
    console = Console(record=True, width=300)
    sweep_command(console, ws, ["recipes/table1/cremad"], seeds=3, quick=True, epochs=2, dataset="demo", sets=TINY,
                  only="concat,concat-bmm", dry_run=True)
    assert console.export_text().count("done, reused") == 6


def test_edited_recipe_is_not_silently_reused(quick_sweep, tmp_path):
    ws, _ = quick_sweep
    spec = plan_sweep(["recipes/table1/cremad"], seeds=1, quick=True, epochs=2, dataset="demo", sets=TINY,
                      only="concat").runs[0]
    assert run_state(ws, spec) == "done"
    saved = ws / "runs" / spec.name / "config.yaml"
    text = saved.read_text()
    saved.write_text(text.replace("  name: adam\n", "", 1))  # a run of an older mmvid, before optim.name existed
    try:
        assert "adam" not in saved.read_text()
        assert run_state(ws, spec) == "done"  # a key it lacked was trained at its default
    finally:
        saved.write_text(text)
    spec.config.optim.lr = 0.5
    with pytest.raises(MmvidError, match=r"was trained with another config \(optim.lr: 0.001 there, 0.5 in the sweep\)"):
        run_state(ws, spec)


def test_interrupted_run_is_resumed_and_finished_ones_kept(quick_sweep, monkeypatch):
    """A sweep stopped inside a run (Ctrl-C: the run saves mid-epoch): the next sweep resumes that run with
    ``--resume`` and does not retrain the finished one (concat, trained by the quick sweep)."""
    from mmvid.engine import progress
    from mmvid.workflows import run_train

    tiny_ws = quick_sweep[0]
    opts = dict(seeds=1, quick=True, epochs=2, dataset="demo", sets=TINY, only="concat,film")
    sweep = plan_sweep(["recipes/table1/cremad"], **opts)
    done, stopped = sweep.runs
    assert run_state(tiny_ws, done) == "done"
    stamp = (tiny_ws / "runs" / done.name / "checkpoint_last.pt").stat().st_mtime_ns
    def requested(self, all_reduce=None):  # Ctrl-C at the first step of the second epoch
        return (tiny_ws / "runs" / stopped.name / "metrics.jsonl").exists()

    monkeypatch.setattr(progress.StopRequest, "requested", requested)
    assert train_command(tiny_ws, stopped, "new")[-2:] == ["--seed", "0"]
    with pytest.raises(MmvidError, match="training interrupted"):  # the run as the sweep starts it
        run_train(QUIET, tiny_ws, str(stopped.recipe), {**stopped.overrides, "run_name": stopped.name}, progress=False)
    monkeypatch.undo()
    assert run_state(tiny_ws, stopped) == "partial" and run_state(tiny_ws, done) == "done"
    console = Console(record=True, width=300)
    sweep_command(console, tiny_ws, ["recipes/table1/cremad"], **opts, dry_run=True)
    assert f"--resume {stopped.name}" in console.export_text()
    sweep_command(QUIET, tiny_ws, ["recipes/table1/cremad"], **opts, progress=False)
    log = (tiny_ws / "sweeps" / sweep.name / "logs" / f"{stopped.name}.log").read_text()
    assert "--resume" in log and "resuming" in log
    assert [m["epoch"] for m in _metrics(tiny_ws / "runs" / stopped.name)] == [0, 1]
    assert (tiny_ws / "runs" / done.name / "checkpoint_last.pt").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_ctrl_c_to_a_running_sweep_then_the_same_command_finishes(tiny_ws):
    """Ctrl-C to the sweep's process group (as a terminal sends it), wherever it lands: one line, exit 2,
    and the same command then finishes every run, each epoch once, without retraining finished runs.

    The sweep starts with SIGINT ignored, as a background job of a script does (CI runs like that): its runs
    still take Ctrl-C as a stop request, so the sweep must too, not report them as failed."""
    args = [sys.executable, "-m", "mmvid.cli", "sweep", "recipes/table1/cremad", "-w", str(tiny_ws), "--seeds", "1",
            "--epochs", "3", "--dataset", "demo", "--only", "bigated", *sum((["--set", f"{k}={v}"] for k, v in TINY.items()), [])]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    runs = tiny_ws / "runs"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if any((d / "metrics.jsonl").exists() for d in runs.glob("sweep-table1-cremad-bigated-*")):
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err
    if proc.returncode != 0:  # it may have finished just before the signal on a fast machine
        assert proc.returncode == 2 and "sweep interrupted" in " ".join(err.split()), err
    ours = [d for d in runs.glob("sweep-table1-cremad-bigated-*") if "quick" not in d.name]
    finished = {d.name: (d / "checkpoint_last.pt").stat().st_mtime_ns for d in ours if (d / "summary.json").exists()}
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    for name, stamp in finished.items():
        assert (runs / name / "checkpoint_last.pt").stat().st_mtime_ns == stamp
    ours = [d for d in runs.glob("sweep-table1-cremad-bigated-*") if "quick" not in d.name]
    assert len(ours) == 1
    for d in ours:
        assert [m["epoch"] for m in _metrics(d)] == [0, 1, 2], d.name


def test_task_runs_only_its_run(tiny_ws):
    opts = dict(seeds=2, quick=True, epochs=1, dataset="demo", sets=TINY, only="bigated")
    sweep = plan_sweep(["recipes/table1/cremad"], **opts)
    sweep_command(QUIET, tiny_ws, ["recipes/table1/cremad"], **opts, task=1, progress=False, keep="best")
    assert run_state(tiny_ws, sweep.runs[1]) == "done"
    run = tiny_ws / "runs" / sweep.runs[1].name
    assert (run / "checkpoint_best.pt").exists() and not (run / "checkpoint_last.pt").exists()  # --keep best
    assert run_state(tiny_ws, sweep.runs[0]) == "new"
    with pytest.raises(MmvidError, match="--task"):
        sweep_command(QUIET, tiny_ws, ["recipes/table1/cremad"], **opts, task=2)


def test_the_table_says_which_setups_trained_its_runs(quick_sweep, tmp_path):
    """table.md names the setup every run was trained on (run.json); when one run's run.json says another
    machine trained it, the table says the runs come from two setups, with the count of each."""
    from mmvid.runfiles import read_run_info, session_setup

    ws = quick_sweep[0]
    collect = lambda: sweep_command(QUIET, ws, ["recipes/table1/cremad"], seeds=3, quick=True, epochs=2,  # noqa: E731
                                    dataset="demo", sets=TINY, only="concat,concat-bmm", collect=True,
                                    progress=False, baseline="concat")
    files = collect()  # the quick sweep's table, written again (other tests write other sweeps beside it)
    plan = json.loads((files[0].parent / "sweep.json").read_text())
    runs = [ws / "runs" / c["run"] for c in plan["cells"]]
    assert len(runs) == 6 and all(run_state(ws, r) == "done" for r in plan_sweep(
        ["recipes/table1/cremad"], seeds=3, quick=True, epochs=2, dataset="demo", sets=TINY,
        only="concat,concat-bmm").runs)
    setup = session_setup(read_run_info(runs[0])["sessions"][0])
    assert setup.startswith("mmvid ") and "torch " in setup and "CPU" in setup
    assert f"Every run was trained on {setup} (run.json)." in (files[0].parent / "table.md").read_text()
    original = (runs[-1] / "run.json").read_text()
    info = json.loads(original)
    info["sessions"][0].update(torch="9.9.9", cuda="12.4", gpus=["NVIDIA H100"], gpu_count=1)
    try:
        (runs[-1] / "run.json").write_text(json.dumps(info))
        table = (collect()[0].parent / "table.md").read_text()
    finally:
        (runs[-1] / "run.json").write_text(original)
    other = session_setup(info["sessions"][0])
    assert "The runs were trained on 2 different setups (run.json)" in table
    assert f"{setup} (5 runs)" in table and f"{other} (1 run)" in table
    assert "torch 9.9.9, CUDA 12.4, 1 x NVIDIA H100" in other


def test_emit_slurm_takes_the_job_arrays_settings_from_options_over_a_recipe_section(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "concat.yaml").write_text(
        "extends: cremad\nslurm: {partition: short, account: lab1, mem: 32G, throttle: 4}\n")
    files = sweep_command(QUIET, tmp_path, [str(tmp_path / "t")], seeds=2, emit="slurm",
                          slurm={"partition": "gpu", "time": "1-04:00:00", "cpus": "6", "gres": "gpu:a100:2",
                                 "qos": "high"})
    script = files[0].read_text()
    sbatch = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    # the options win key by key; the recipe's section gives the rest; the array is throttled to 4 tasks at once
    for line in ("--array=0-1%4", "--partition=gpu", "--account=lab1", "--time=1-04:00:00", "--mem=32G",
                 "--cpus-per-task=6", "--gres=gpu:a100:2", "--qos=high", "--requeue", "--signal=B:USR1@180"):
        assert f"#SBATCH {line}" in sbatch, line
    assert not any("--partition=short" in ln for ln in sbatch)
    # requeued near its time limit; started again, the task's sweep resumes its run (mmvid train --resume)
    assert 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"' in script and "trap requeue USR1" in script
    assert subprocess.run(["bash", "-n", str(files[0])]).returncode == 0  # the script parses
    plain = sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=1, only="concat", emit="slurm",
                          slurm={"gres": "none", "signal": "0"})[0].read_text()
    plain = [ln for ln in plain.splitlines() if ln.startswith("#SBATCH")]
    assert not [ln for ln in plain if "--gres" in ln or "--signal" in ln] and "#SBATCH --cpus-per-task=8" in plain


@pytest.mark.parametrize("slurm, message", [
    ({"partiton": "gpu"}, r"^config slurm\.partiton: the Slurm script has no setting 'partiton'; did you mean slurm\.partition\?"),
    ({"time": "4h"}, r"^config slurm\.time='4h' is not valid for the Slurm script; it must be minutes, HH:MM:SS"),
    ({"partition": "gpu\n#SBATCH --x"}, r"is not valid for the Slurm script; it must be one word"),
    ({"throttle": "0"}, r"^config slurm\.throttle"),
])
def test_a_bad_slurm_setting_is_one_line_before_anything_is_written(tmp_path, slurm, message):
    with pytest.raises(MmvidError, match=message):
        sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=1, emit="slurm", slurm=slurm)
    assert not (tmp_path / "sweeps").exists()


# ----------------------------------------------------------------------------- --grid


def test_grid_names_each_point_as_a_row_and_its_slurm_script_carries_grid_and_settings(tmp_path):
    grid = ["augment.beta=0.2,0.4", "augment.warmup=0,5"]
    sweep = plan_sweep(["recipes/table1/cremad"], seeds=2, only="concat-bmm", grid=parse_grid(grid))
    rows = list(dict.fromkeys(r.row for r in sweep.runs))
    assert rows == [f"Concat + B-MM [augment.beta={b}, augment.warmup={w}]" for b in ("0.2", "0.4") for w in ("0", "5")]
    assert len(sweep.unique) == 4 * 2 and len({r.name for r in sweep.runs}) == 8
    for r in sweep.runs:  # each point's config is resolved with its values, through the typed settings
        b, w = re.search(r"beta=([\d.]+), augment.warmup=(\d+)", r.row).groups()
        assert (r.config.augment.args["beta"], r.config.augment.args["warmup"]) == (float(b), int(w))
    console = Console(record=True, width=400)
    sweep_command(console, tmp_path, ["recipes/table1/cremad"], seeds=2, only="concat-bmm", grid=grid, dry_run=True)
    lines = [ln for ln in console.export_text().splitlines() if ln.startswith("mmvid train")]
    assert len(lines) == 8 and sum("--set augment.beta=0.4 --set augment.warmup=5" in ln for ln in lines) == 2
    files = sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=2, only="concat-bmm", grid=grid,
                          emit="slurm", slurm={"partition": "gpu", "throttle": "3"})
    script = files[0].read_text()
    assert "#SBATCH --array=0-7%3" in script and "#SBATCH --partition=gpu" in script
    assert "--grid augment.beta=0.2,0.4 --grid augment.warmup=0,5" in script  # each task plans the same grid
    assert subprocess.run(["bash", "-n", str(files[0])]).returncode == 0


@pytest.mark.parametrize("grid, message", [
    (["augment.beta=0.2,-1"], r"config augment\.args\.beta='-1' is not valid for augmentation 'bmm'.*\(given by --grid augment\.beta\)$"),
    (["augment.bta=0.2"], r"unknown config key 'augment\.bta'.*\(given by --grid augment\.bta\)$"),
    (["augment.beta"], r"^--grid 'augment\.beta' must look like KEY=v1,v2,\.\.\."),
    (["augment.beta=0.2,", ], r"^--grid 'augment\.beta=0\.2,' must look like"),
    (["augment.beta=0.2", "augment.beta=0.4"], r"^--grid augment\.beta is given twice"),
])
def test_a_bad_grid_point_is_one_line_before_any_run(tmp_path, grid, message):
    with pytest.raises(MmvidError, match=message):
        sweep_command(QUIET, tmp_path, ["recipes/table1/cremad"], seeds=1, only="concat-bmm", grid=grid)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "sweeps").exists()
