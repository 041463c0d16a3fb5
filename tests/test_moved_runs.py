"""Runs and caches that move: a workspace copied elsewhere reads its own cache (checked against the cache
fingerprint the run recorded, named in one line), ``--cache`` overrides it in every command that reads a run's
clips, and ``train --resume`` of a run without a checkpoint says what it discards and keeps it aside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.engine.checkpoints import atomic_save, load_checkpoint
from mmvid.workspace import CKPT_BEST, CKPT_LAST

RUN = "tiny-concat"


@pytest.fixture(scope="module")
def other_cache(tmp_path_factory) -> Path:
    """A second demo cache of the same classes but other clips: another fingerprint."""
    from mmvid.workflows import run_prepare

    ws = tmp_path_factory.mktemp("other")
    return run_prepare(Console(quiet=True), ws, "demo", clips=40, seed=1, progress=False)


@pytest.fixture
def moved(tmp_path, tiny_ws, tiny_run) -> Path:
    """The tiny workspace copied elsewhere (its cache and its run), as onto another machine."""
    ws = tmp_path / "moved"
    (ws / "caches").mkdir(parents=True)
    shutil.copy2(tiny_ws / "caches" / "demo.h5", ws / "caches" / "demo.h5")
    shutil.copytree(tiny_run, ws / "runs" / RUN)
    return ws


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output and (result.exception is None or isinstance(result.exception, SystemExit)), \
        result.output
    return result.exit_code, result.output


def cache_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith(f"cache of {RUN}: ")]


def test_the_run_records_the_fingerprint_of_its_cache(tiny_run, tiny_ws):
    from mmvid.data.cache import read_info

    fp = read_info(tiny_ws / "caches" / "demo.h5").attrs["fingerprint"]
    for name in (CKPT_LAST, CKPT_BEST):
        assert load_checkpoint(tiny_run / name)["cache_fingerprint"] == fp


def test_a_moved_workspace_reads_its_own_cache_and_says_so(moved, tiny_ws):
    code, out = invoke("evaluate", RUN, "-w", moved)
    assert code == 0, out
    own = moved / "caches" / "demo.h5"
    assert cache_lines(out) == [f"cache of {RUN}: {own} (in the run's workspace; fingerprint "
                                f"{load_checkpoint(moved / 'runs' / RUN / CKPT_LAST)['cache_fingerprint']} as recorded "
                                f"by the run)"], out
    saved = json.loads((moved / "runs" / RUN / "eval_test.json").read_text())
    assert saved["cache"] == str(own) and str(tiny_ws) not in saved["cache"]


# Every command that reads a run's clips (train --resume included: it reads them to train on).
READERS = {
    "evaluate": ["evaluate", RUN],
    "robustness": ["robustness", RUN, "--drop", "audio"],
    "visualize umap": ["visualize", "umap", RUN],
    "visualize confusion": ["visualize", "confusion", RUN],
    "report": ["report", RUN, "--no-umap"],
    "diagnose": ["diagnose", RUN, "--no-alone"],
    "train --resume": ["train", "--resume", RUN],
}


@pytest.mark.parametrize("command", list(READERS))
def test_a_truncated_cache_in_the_moved_workspace_is_the_one_read(moved, command):
    """The issue's case: the copy's cache is truncated, the original is intact. `evaluate` used to read the
    original (the absolute path in the checkpoint) and exit 0; every command now reads the copy, and stops."""
    own = moved / "caches" / "demo.h5"
    with open(own, "r+b") as fh:
        fh.truncate(own.stat().st_size // 2)
    code, out = invoke(*READERS[command], "-w", moved)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, out
    assert f"cache {own} is damaged" in errors[0], errors[0]


def test_another_cache_of_the_same_name_is_refused_naming_it(moved, other_cache):
    own = moved / "caches" / "demo.h5"
    shutil.copy2(other_cache, own)
    code, out = invoke("evaluate", RUN, "-w", moved)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, out
    assert f"cache {own} is not the cache run {RUN} was trained on (fingerprint" in errors[0]
    assert "--cache PATH" in errors[0]


@pytest.mark.parametrize("command", ["evaluate", "robustness", "visualize confusion", "report", "diagnose"])
def test_cache_overrides_the_runs_cache_in_every_command(moved, other_cache, command):
    """--cache with another cache (40 other clips, the same classes): read, named, and its own test split used."""
    args = [*READERS[command], "-w", moved, "--cache", other_cache]
    if command == "report":
        args.append("--no-robustness")
    code, out = invoke(*args)
    assert code == 0, out
    lines = cache_lines(out)
    assert lines and lines[0].startswith(f"cache of {RUN}: {other_cache} (given by --cache; not the cache the run "
                                         f"was trained on (fingerprint"), out
    assert "the cache's own splits are used" in lines[0]


def test_cache_given_is_checked_against_the_run(moved, tiny_ws, other_cache):
    from mmvid.data.cache import read_info

    code, out = invoke("evaluate", RUN, "-w", moved, "--cache", tiny_ws / "caches" / "demo.h5", "--json")
    assert code == 0, out
    same = json.loads(out)
    assert same["cache_source"] == "given by --cache; the cache the run was trained on"
    assert same["n"] == len(load_checkpoint(moved / "runs" / RUN / CKPT_LAST)["splits"]["test"])
    code, out = invoke("evaluate", RUN, "-w", moved, "--cache", other_cache, "--json")
    assert code == 0, out
    assert json.loads(out)["n"] == len(read_info(other_cache).indices("test"))  # its own test split


def test_without_a_cache_in_its_workspace_the_stored_path_is_read_and_named(moved, tiny_ws):
    (moved / "caches" / "demo.h5").unlink()
    code, out = invoke("evaluate", RUN, "-w", moved)
    assert code == 0, out
    assert cache_lines(out)[0].startswith(f"cache of {RUN}: {tiny_ws / 'caches' / 'demo.h5'} (the path stored in the "
                                          f"run; its workspace has no caches/demo.h5; fingerprint"), out


def rewrite_checkpoints(run: Path, **changes) -> None:
    for name in (CKPT_LAST, CKPT_BEST):
        ck = load_checkpoint(run / name)
        for k, v in changes.items():
            if v is None:
                ck.pop(k, None)
            else:
                ck[k] = v
        atomic_save(ck, run / name)


def test_a_cache_found_nowhere_is_one_line_naming_both_places(moved, tmp_path):
    (moved / "caches" / "demo.h5").unlink()
    gone = tmp_path / "elsewhere" / "caches" / "demo.h5"
    rewrite_checkpoints(moved / "runs" / RUN, cache=str(gone))
    code, out = invoke("evaluate", RUN, "-w", moved)
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, out
    assert f"neither at {moved / 'caches' / 'demo.h5'} nor at {gone}" in errors[0] and "--cache" in errors[0]


def test_a_run_older_than_fingerprints_still_reads_its_cache_and_says_it_was_not_checked(moved, other_cache):
    rewrite_checkpoints(moved / "runs" / RUN, cache_fingerprint=None)
    code, out = invoke("evaluate", RUN, "-w", moved)
    assert code == 0, out
    assert cache_lines(out)[0].endswith("(in the run's workspace; the run records no cache fingerprint, so it was "
                                        "not checked)"), out
    # what can still be checked: a smaller cache of the same classes lacks the rows the run's splits name
    shutil.copy2(other_cache, moved / "caches" / "demo.h5")
    code, out = invoke("evaluate", RUN, "-w", moved)
    assert code == 2 and "it is not the cache the run was trained on" in out, out


# ----------------------------------------------------------------------------- train --resume without a checkpoint


def two_epochs_no_checkpoint(moved: Path) -> Path:
    """The issue's case: a run of 2 epochs whose 2 epochs are logged, but whose checkpoints are gone."""
    from mmvid.config import save_config
    from mmvid.runfiles import read_config

    run = moved / "runs" / RUN
    cfg = read_config(run)
    cfg.epochs = 2
    save_config(cfg, run / "config.yaml")
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    (run / "metrics.jsonl").write_text(json.dumps(first) + "\n" + json.dumps({**first, "epoch": 1}) + "\n")
    for name in (CKPT_LAST, "summary.json"):
        (run / name).unlink()
    return run


def test_resume_without_checkpoint_says_what_it_discards_and_keeps_it_aside(moved):
    from mmvid.workflows import run_train

    run = two_epochs_no_checkpoint(moved)
    old = {n: (run / n).read_bytes() for n in ("metrics.jsonl", CKPT_BEST)}
    console = Console(record=True, width=400, file=open("/dev/null", "w"))
    run_train(console, moved, None, {}, resume=RUN, progress=False)
    text = console.export_text()
    aside = run / "discarded"
    assert (f"{RUN} has no checkpoint_last.pt to continue from; restarting it from the beginning with its saved "
            f"config.yaml; what it had is discarded from the run and kept aside in {aside}: metrics.jsonl (2 logged "
            f"epochs), checkpoint_best.pt") in text, text
    assert "it stopped during its first epoch" not in text
    assert {n: (aside / n).read_bytes() for n in old} == old  # nothing lost
    new = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in new] == [0, 1] and load_checkpoint(run / CKPT_LAST)["epoch"] == 1


def test_resume_of_a_finished_run_whose_checkpoints_were_removed_trains_nothing(moved):
    """`mmvid sweep --keep metrics` removes a finished run's checkpoints; resuming it must not restart it."""
    from mmvid.workflows import run_train

    run = moved / "runs" / RUN
    for name in (CKPT_LAST, CKPT_BEST):
        (run / name).unlink()
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    console = Console(record=True, width=400, file=open("/dev/null", "w"))
    run_train(console, moved, None, {}, resume=RUN, progress=False)
    assert f"{RUN} has finished all 1 epochs" in console.export_text()
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_says_which_logged_epochs_after_its_checkpoint_are_dropped(moved):
    from mmvid.workflows.train import redone_note

    run = moved / "runs" / RUN
    ck = load_checkpoint(run / CKPT_LAST)
    assert redone_note(run, ck) == ""
    first = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(first + json.dumps({**json.loads(first), "epoch": 1}) + "\n")
    assert redone_note(run, ck) == ("; metrics.jsonl logged epoch 2 after that checkpoint: its line is dropped, "
                                    "as training goes on from the checkpoint")
