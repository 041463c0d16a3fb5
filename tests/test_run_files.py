"""Every file of a run folder is untrusted input, in every command that opens a run: a damaged config.yaml,
metrics.jsonl or summary.json is one line naming the file (exit 2, no traceback), found before any model is
loaded, and a YAML tag never runs code. The reader keeps the torn-last-line rule of an interrupted append."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.errors import MmvidError
from mmvid.runfiles import RunFileDamaged, check_run, read_jsonl

# What a damaged file holds: the four config.yaml damages of the issue, and four of each JSON file.
CONFIG_DAMAGE = {
    "broken YAML": b"{bad",
    "not UTF-8": b"epochs: 1\nseed: \xff\xfe\x80\n",
    "a YAML list": b"- data\n- model\n",
    "a python tag": b'!!python/object/apply:os.system ["echo hi > {marker}"]\n',
}
JSON_DAMAGE = {
    "not JSON": b"this is not json\n",
    "a JSON list": b"[1, 2, 3]\n",
    "not UTF-8": b'{"epoch": 0, "x": "\xff\xfe"}\n',
    "empty": b"",
}
DAMAGES = ([("config.yaml", k) for k in CONFIG_DAMAGE] + [("metrics.jsonl", k) for k in JSON_DAMAGE]
           + [("summary.json", k) for k in JSON_DAMAGE])

def sweep_recipe(folder: Path) -> Path:
    """A one-row sweep whose single run has tiny_run's config (so a copy of tiny_run is that run)."""
    recipe = folder / "damaged.yaml"
    recipe.write_text("extends: demo\nepochs: 1\ndata: {dataset: demo, batch_size: 16}\n")
    return recipe


# Every command that opens a run; {run}, {ws} and {recipe} are filled in per case.
COMMANDS = {
    "evaluate": ["evaluate", "{run}", "-w", "{ws}"],
    "robustness": ["robustness", "{run}", "--drop", "audio", "-w", "{ws}"],
    "visualize curves": ["visualize", "curves", "{run}", "-w", "{ws}"],
    "visualize umap": ["visualize", "umap", "{run}", "-w", "{ws}"],
    "visualize confusion": ["visualize", "confusion", "{run}", "-w", "{ws}"],
    "report": ["report", "{run}", "-w", "{ws}"],
    "diagnose": ["diagnose", "{run}", "--no-alone", "-w", "{ws}"],
    "train --resume": ["train", "--resume", "{run}", "-w", "{ws}"],
    "sweep (reuse of a run)": ["sweep", "{recipe}", "--seeds", "1", "--dry-run", "-w", "{ws}"],
}


@pytest.fixture
def copied(tmp_path, tiny_ws, tiny_run):
    """A workspace holding the demo cache and a copy of tiny_run, under the name the sweep gives its run."""
    from mmvid.config import save_config
    from mmvid.sweeps.plan import plan_sweep

    ws = tmp_path / "ws"
    (ws / "caches").mkdir(parents=True)
    shutil.copy2(tiny_ws / "caches" / "demo.h5", ws / "caches" / "demo.h5")
    recipe = sweep_recipe(tmp_path)
    spec = plan_sweep([str(recipe)], seeds=1).runs[0]
    run = ws / "runs" / spec.name
    shutil.copytree(tiny_run, run)
    save_config(spec.config, run / "config.yaml")  # the sweep's own config: reused as it is, when sound
    return ws, run, recipe


def damage(run: Path, name: str, kind: str, marker: Path) -> Path:
    path = run / name
    data = CONFIG_DAMAGE[kind] if name == "config.yaml" else JSON_DAMAGE[kind]
    path.write_bytes(data.replace(b"{marker}", str(marker).encode()))
    return path


def test_the_copied_run_is_sound_for_every_command_that_reads_it(copied):
    """The baseline of the matrix below: without damage, the copy passes the checks and the sweep reuses it."""
    ws, run, recipe = copied
    check_run(run)
    result = CliRunner().invoke(app, ["sweep", str(recipe), "--seeds", "1", "--dry-run", "-w", str(ws)])
    assert result.exit_code == 0, result.output
    assert "done" in result.output


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name,kind", DAMAGES, ids=[f"{n}: {k}" for n, k in DAMAGES])
def test_a_damaged_run_file_is_one_line_in_every_command(copied, tmp_path, monkeypatch, command, name, kind):
    ws, run, recipe = copied
    marker = tmp_path / "code-ran"
    path = damage(run, name, kind, marker)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    # Damage must be found before any model is built: building one here fails the test.
    import mmvid.models.classifier as classifier

    def no_model(*a, **k):
        raise AssertionError("a model was built before the damaged file was read")

    monkeypatch.setattr(classifier, "make_classifier", no_model)
    monkeypatch.setattr("mmvid.engine.model.make_classifier", no_model)
    monkeypatch.setattr("mmvid.engine.loop.build_model", no_model)
    monkeypatch.setattr("mmvid.engine.checkpoints.build_model", no_model)
    args = [a.format(run=run.name, ws=ws, recipe=recipe) for a in COMMANDS[command]]
    result = CliRunner().invoke(app, args)
    out = result.output
    assert result.exit_code == 2, out
    assert "Traceback" not in out and not isinstance(result.exception, AssertionError), out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], out
    assert "damaged" in errors[0] and ";" in errors[0], errors[0]  # what is wrong; then what to do
    assert not marker.exists(), "the YAML tag ran code"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing moved or rewritten


@pytest.mark.parametrize("kind,text", [
    ("bad robustness", b'{"labels": 3}'), ("robustness not UTF-8", b'{"labels": ["\xff"]}'),
])
def test_report_reads_a_saved_robustness_json_through_the_reader(copied, kind, text):
    ws, run, _ = copied
    (run / "robustness").mkdir()
    path = run / "robustness" / "robustness.json"
    path.write_bytes(text)
    result = CliRunner().invoke(app, ["report", run.name, "--no-umap", "-w", str(ws)])
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1 and str(path) in errors[0], result.output
    assert "mmvid robustness" in errors[0]  # what to do: write it again


# ----------------------------------------------------------------------------- the reader itself


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(data)
    return path


def test_a_last_line_torn_by_a_kill_is_dropped(tmp_path):
    """An append interrupted by a kill leaves a prefix of the line without its newline: dropped, as before."""
    path = write(tmp_path, b'{"epoch": 0, "acc": 0.5}\n{"epoch": 1, "ac')
    assert read_jsonl(path) == [{"epoch": 0, "acc": 0.5}]


@pytest.mark.parametrize("data,what", [
    (b'{"epoch": 0}\n[1, 2]\n', "line 2 is a JSON list"),  # parses, so not torn: a list is no record
    (b'{"epoch": 0}\n[1, 2]', "line 2 is a JSON list"),  # even without its newline
    (b'{"epoch": 0}\n{"epoch": 1, "ac\n', "line 2 is not JSON"),  # a whole line (newline written) that is not JSON
    (b'{"epoch": 0}\nxx\n{"epoch": 1}\n', "line 2 is not JSON"),
    (b'{"epoch": 0, "acc": "high"}\n', "acc is not a number"),
    (b'{"acc": 0.5}\n', "line 1 has no epoch number"),
    (b'{"epoch": 0}\n{"epoch": 1, "a": "\xe9"}', "not UTF-8 text: byte 32"),  # a Latin-1 byte, torn or not
])
def test_anything_else_than_records_is_damage_naming_the_line(tmp_path, data, what):
    path = write(tmp_path, data)
    with pytest.raises(RunFileDamaged) as e:
        read_jsonl(path)
    assert str(e.value).startswith(f"{path} is damaged") and what in str(e.value)


def test_an_empty_history_beside_a_checkpoint_is_damage(copied):
    _, run, _ = copied
    (run / "metrics.jsonl").write_text('{"epoch": 0, "train_lo')  # only a torn line: no epoch survived
    with pytest.raises(RunFileDamaged, match="no epoch in it, but the run has checkpoint_last.pt, checkpoint_best.pt, summary.json"):
        check_run(run)


def test_a_history_shorter_than_its_summary_is_damage(copied):
    """summary.json is written after the last epoch's line: a history that ends before it lost lines."""
    import json

    _, run, _ = copied
    summary = json.loads((run / "summary.json").read_text())
    summary["epochs"] = 3
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(RunFileDamaged, match="ends at epoch 1, but summary.json says the run trained 3"):
        check_run(run)


def test_a_config_that_is_no_config_is_damage_naming_the_key(copied):
    _, run, _ = copied
    (run / "config.yaml").write_text("data: {batch_size: -3}\n")
    with pytest.raises(MmvidError, match=r"config.yaml is damaged \(.*data.batch_size"):
        check_run(run)
