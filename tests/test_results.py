"""evaluate, robustness, visualize and report on a tiny trained demo run (issue 6).

One session fixture prepares 40 demo clips and trains three small runs (concat+bmm for 3 epochs
without a validation split, concat for 1, and concat for 3 with one); every test reads them. Corruptions are checked against their stated severity
units on synthetic tensors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

from mmvid import corruptions as C
from mmvid.cli import app
from mmvid.data.torch_dataset import IMAGENET_MEAN, IMAGENET_STD
from mmvid.results.evaluation import confusion, macro_f1
from mmvid.results.plotting import DPI, PANEL

runner = CliRunner()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    from mmvid.workflows import run_prepare, run_train

    ws = tmp_path_factory.mktemp("results-ws")
    quiet = Console(file=io.StringIO())
    run_prepare(quiet, ws, "demo", clips=40, progress=False)
    common = {"device": "cpu", "data.batch_size": 8, "optim.lr": 0.005, "data.val_fraction": 0}
    bmm = run_train(quiet, ws, "demo", {**common, "epochs": 3, "augment.name": "bmm", "augment.args.warmup": 1,
                                        "run_name": "bmm"}, progress=False)
    concat = run_train(quiet, ws, "demo", {**common, "epochs": 1, "run_name": "concat"}, progress=False)
    said = Console(file=io.StringIO(), width=400)
    val = run_train(said, ws, "demo", {**common, "epochs": 3, "data.val_fraction": 0.25, "run_name": "val"}, progress=False)
    return {"ws": ws, "bmm": bmm, "concat": concat, "val": val, "val_said": said.file.getvalue()}


def cli(tiny, *args: str, code: int = 0):
    res = runner.invoke(app, [*args, "--workspace", str(tiny["ws"])])
    assert res.exit_code == code, res.output
    return res


def written(res) -> list[Path]:
    return [Path(p) for p in re.findall(r"wrote (\S+)", res.output)]


def png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def svg_panels(path: Path) -> int:
    """Number of matplotlib axes (panels) in a saved SVG."""
    return len(re.findall(r'<g id="axes_\d+"', path.read_text()))


def check_figure(paths: list[Path], size_in: tuple[float, float], panels: int) -> None:
    pngs = [p for p in paths if p.suffix == ".png"]
    svgs = [p for p in paths if p.suffix == ".svg"]
    assert len(pngs) == 1 and len(svgs) == 1, paths
    assert pngs[0].stat().st_size > 10_000
    assert png_size(pngs[0]) == (round(size_in[0] * DPI), round(size_in[1] * DPI))
    assert svg_panels(svgs[0]) == panels


# ----------------------------------------------------------------------------- evaluate


def test_confusion_and_macro_f1_match_sklearn():
    from sklearn.metrics import confusion_matrix, f1_score

    y = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    p = np.array([0, 1, 1, 1, 0, 2, 3, 3])
    cm = confusion(y, p, 5)  # class 4 never appears: it must not count in the macro mean
    assert (cm[:4, :4] == confusion_matrix(y, p)).all() and cm[4].sum() == 0
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro"))


def test_evaluate_side_by_side_and_json(tiny):
    res = cli(tiny, "evaluate", "bmm", "concat")
    assert "concat+bmm" in res.output and "concat+none" in res.output
    for name in ("bmm", "concat"):
        ev = json.loads((tiny[name] / "eval_test.json").read_text())
        cm = np.asarray(ev["confusion"])
        assert cm.sum() == ev["n"] == 10
        assert ev["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
        assert list(ev["per_class_accuracy"]) == ev["class_names"] == [f"digit{i}" for i in range(10)]
        for m in ("audio", "video"):  # per-modality accuracy is the diagonal of its masked confusion
            mcm = np.asarray(ev["modality_confusion"][m])
            assert ev["modality_accuracy"][m] == pytest.approx(np.trace(mcm) / ev["n"])
        s = ev["modality_score"]
        assert ev["rho"] == pytest.approx(s["audio"] / s["video"])  # Eq. 6


def test_evaluate_a_checkpoint_file(tiny, tmp_path):
    res = cli(tiny, "evaluate", str(tiny["concat"] / "checkpoint_last.pt"), "--json")
    out = json.loads(res.output)
    assert (out["checkpoint"], out["checkpoint_epoch"]) == ("last", 0)
    mine = tmp_path / "mine.pt"  # any other file: labelled by its name and its own epoch
    mine.write_bytes((tiny["bmm"] / "checkpoint_last.pt").read_bytes())
    res = cli(tiny, "evaluate", str(mine))
    out = json.loads((tmp_path / "eval_test_mine.json").read_text())
    assert (out["checkpoint"], out["checkpoint_epoch"], out["checkpoint_path"]) == ("given file", 2, str(mine))
    assert "given file mine.pt (epoch 3)" in res.output


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", ["val", "bmm"])
def test_evaluate_says_which_checkpoint_and_matches_its_epoch(tiny, name):
    """best = the first epoch of highest val accuracy (test accuracy without a validation split), last =
    the last epoch: each evaluation is labelled so and reproduces that epoch's test_acc in metrics.jsonl."""
    recs = read_metrics(tiny[name])
    select = "val_acc" if "val_acc" in recs[0] else "test_acc"
    assert select == ("val_acc" if name == "val" else "test_acc")
    best = max(range(len(recs)), key=lambda i: (recs[i][select], -i))
    note = "best-validation checkpoint" if name == "val" else "best-test checkpoint"
    for which, epoch, label in (("best", best, note), ("last", len(recs) - 1, "last checkpoint")):
        out = json.loads(cli(tiny, "evaluate", name, "--checkpoint", which, "--json").output)
        assert (out["checkpoint"], out["checkpoint_epoch"]) == (which, recs[epoch]["epoch"])
        assert out["checkpoint_path"] == str(tiny[name] / f"checkpoint_{which}.pt")
        assert out["accuracy"] == pytest.approx(recs[epoch]["test_acc"], abs=1e-9)
        res = cli(tiny, "evaluate", name, "--checkpoint", which)
        assert f"{label} (epoch {epoch + 1}" in res.output
        saved = tiny[name] / ("eval_test.json" if which == "best" else "eval_test_last.json")
        assert f"wrote {saved}" in res.output
        assert json.loads(saved.read_text())["checkpoint"] == which


def test_training_summary_names_the_last_and_the_best_epoch(tiny):
    recs = read_metrics(tiny["val"])
    best = max(range(len(recs)), key=lambda i: (recs[i]["val_acc"], -i))
    said = " ".join(tiny["val_said"].split())
    assert f"test acc {100 * recs[-1]['test_acc']:.2f}% at the last epoch ({len(recs)})" in said
    if best == len(recs) - 1:
        assert f"which is also the best-validation epoch (val {100 * recs[best]['val_acc']:.2f}%)" in said
    else:
        assert (f"{100 * recs[best]['test_acc']:.2f}% at the best-validation epoch "
                f"({best + 1}, val {100 * recs[best]['val_acc']:.2f}%)") in said


# ----------------------------------------------------------------------------- robustness


def test_robustness_cli_one_row_per_condition_and_plot(tiny, tmp_path):
    out = tmp_path / "rob"
    res = cli(tiny, "robustness", "bmm", "concat", "--drop", "audio", "--fill", "both", "--noise", "gaussian",
              "--modality", "audio", "--levels", "10,0", "--corruptions", "all", "--out", str(out))
    with (out / "robustness.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    expected = ["clean", "drop audio (zero)", "drop audio (mean)", "noise audio 10 dB", "noise audio 0 dB",
                *[f"{c} {s}" for c in ("blur", "occlusion", "audio-dropout") for s in ("light", "medium", "heavy")]]
    assert [r["condition"] for r in rows] == expected
    assert set(rows[0]) >= {"acc concat+bmm", "acc concat+none"}
    data = json.loads((out / "robustness.json").read_text())
    assert [r["method"] for r in data["runs"]] == ["concat+bmm", "concat+none"]
    for c in expected:  # the Rich table has the same rows
        assert c in res.output
    assert "checkpoints: concat+bmm: best-test checkpoint (epoch" in res.output
    assert [r["checkpoint"] for r in data["runs"]] == ["best", "best"]
    # 5 families (missing, noise on audio, blur, occlusion, audio dropout): a 2 x 3 grid less one panel
    check_figure(written(res), (3 * PANEL[0], 2 * PANEL[1] + 0.5), panels=5)


def test_dropping_a_modality_changes_predictions(tiny, tmp_path):
    from mmvid.results.robustness import compare_robustness

    # on the 30 training clips: the 10 test clips of a 3-epoch model are too few to be sure of a change
    rep = compare_robustness([tiny["bmm"]], drop=["audio", "video"], fill="both", split="train", out_dir=tmp_path,
                             plot=False)
    res = rep.runs[0]["results"]
    for name in ("drop audio (zero)", "drop audio (mean)", "drop video (zero)", "drop video (mean)"):
        assert res[name]["changed"] > 0, name  # a trained model that uses the modality answers differently


def test_conditions_are_reproducible_and_shared_by_runs(tiny, tmp_path):
    from mmvid.results.robustness import compare_robustness

    kw = dict(drop=None, noise="gaussian", modality="all", levels={"audio": [0.0], "video": [0.3]},
              corruptions=["occlusion"], severities=["heavy"], plot=False)
    a = compare_robustness([tiny["bmm"]], out_dir=tmp_path / "a", **kw).runs[0]["results"]
    b = compare_robustness([tiny["bmm"]], out_dir=tmp_path / "b", **kw).runs[0]["results"]
    assert a == b


# ----------------------------------------------------------------------------- corruptions (units)


def test_audio_noise_has_the_stated_snr_on_the_linear_magnitude():
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(4, 1, 129, 64) * 3 + 0.5
    x = torch.log(mag + C.LOG_EPS)
    for snr in (10.0, 0.0, -10.0):  # at high SNR the estimate P_n = E|M+N|^2 - M^2 is itself too noisy
        noisy = (C.audio_noise_snr(x, snr, g).exp() - C.LOG_EPS).double()
        p_s = mag.double().pow(2).mean()
        p_n = noisy.pow(2).mean() - p_s  # E|M + N|^2 = M^2 + P_n for circular N
        assert 10 * math.log10(p_s / p_n) == pytest.approx(snr, abs=0.3)


def test_video_noise_sigma_is_on_the_pixel_scale():
    g = torch.Generator().manual_seed(0)
    pixels = torch.full((2, 3, 3, 32, 32), 0.5)
    x = (pixels - IMAGENET_MEAN) / IMAGENET_STD
    y = C.video_noise(x, 0.05, g) * IMAGENET_STD + IMAGENET_MEAN
    assert float((y - pixels).std()) == pytest.approx(0.05, rel=0.05)


def test_occlusion_and_audio_dropout_cover_the_stated_fraction():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 3, 20, 20) + 10  # no zeros before occlusion
    y = C.occlude(x, 0.25, g)
    zero = y == 0
    assert (zero.float().mean(dim=(1, 2, 3, 4)) == 0.25).all()  # a 10 x 10 patch of 20 x 20
    assert (zero == zero[:, :1, :1]).all()  # the same patch in every frame and channel
    assert (y[~zero] == x[~zero]).all()
    spec = torch.randn(5, 1, 16, 40)
    d = C.audio_dropout(spec, 0.5, g)
    silent = (d == C.SILENCE).all(dim=2)[:, 0]  # (B, L) whole time steps silenced
    assert (silent.sum(1) == 20).all()
    starts = silent.float().argmax(1)
    assert all(silent[i, s:s + 20].all() for i, s in enumerate(starts.tolist()))  # one contiguous block


def test_blur_keeps_constants_and_smooths_noise_without_touching_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 3, 32, 32)
    before = x.clone()
    y = C.blur(x, 1 / 16, g)
    assert torch.equal(x, before)
    assert float(y.std()) < 0.5 * float(x.std())
    flat = torch.full((1, 2, 3, 32, 32), 0.7)
    assert torch.allclose(C.blur(flat, 1 / 16, g), flat, atol=1e-5)


# ----------------------------------------------------------------------------- visualize, report


def test_visualize_curves_confusion_umap(tiny):
    res = cli(tiny, "visualize", "curves", "bmm")
    check_figure(written(res), (3 * PANEL[0], PANEL[1] + 0.4), panels=3)  # accuracy, rho, lambda
    res = cli(tiny, "visualize", "curves", "concat")
    check_figure(written(res), (2 * PANEL[0], PANEL[1] + 0.4), panels=2)  # no lambda without B-MM
    res = cli(tiny, "visualize", "confusion", "bmm")
    side = max(PANEL[0], 0.45 * 10 + 1.5)
    check_figure(written(res), (3 * side, side + 0.6), panels=3)  # fused, audio alone, video alone
    res = cli(tiny, "visualize", "umap", "bmm", "--max-points", "20")
    paths = written(res)
    check_figure(paths, (3 * PANEL[0], 2 * PANEL[1] + 0.9), panels=6)  # (audio, video, fused) x (train, test)
    svg = next(p for p in paths if p.suffix == ".svg").read_text()
    assert "digit0" in svg and "digit9" in svg  # class names from the cache in the legend
    assert "best-test checkpoint (epoch" in svg


def test_umap_leaves_the_thread_count_of_torch_as_it_was():
    """numba's OpenMP layer, which UMAP starts, set the process's OpenMP threads to all cores; PyTorch
    shares that runtime, so a model trained afterwards in the same process ran with other threads and
    other last bits (a one-thread process, as OMP_NUM_THREADS=1 makes it, ended with two). A fresh process,
    since numba starts its layer once per process."""
    import subprocess
    import sys

    code = ("import numpy as np, torch\n"
            "torch.nn.functional.conv2d(torch.ones(1, 1, 64, 64), torch.ones(1, 1, 3, 3))\n"  # as after training
            "from mmvid.results.figures import embed_2d\n"
            "embed_2d(np.random.default_rng(0).random((30, 8), dtype=np.float32), seed=0)\n"
            "import numba\n"
            "print(numba.threading_layer(), torch.get_num_threads())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_NUM_THREADS"} | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    layer, threads = out.stdout.split()
    assert threads == "1", f"UMAP (numba threading layer {layer}) left torch with {threads} threads"


def test_report_is_one_self_contained_html(tiny):
    res = cli(tiny, "report", "bmm", "--no-umap")
    path = written(res)[-1]
    text = path.read_text()
    assert path.name == "report.html"
    assert text.count("data:image/png;base64,") == 3  # curves, confusion, robustness
    assert not re.search(r'(src|href)="(?!data:)', text)  # nothing outside the file
    assert "concat+bmm" in text and "augment:" in text and "drop audio (zero)" in text
    assert "best-test checkpoint (epoch" in text


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, message", [
    (["evaluate", "{empty}"], "no checkpoint"),
    (["evaluate", "{bmm}", "--checkpoint", "middle"], "--checkpoint 'middle' is not valid; choose best"),
    (["robustness", "{bmm}", "--drop", "smell"], "unknown modality 'smell'"),
    (["robustness", "{bmm}", "--drop", "flow"], "no flow modality"),
    (["robustness", "{bmm}"], "say what to test"),
    (["robustness", "{bmm}", "--corruptions", "fog"], "unknown corruption 'fog'"),
    (["robustness", "{bmm}", "--noise", "gaussian", "--modality", "each", "--levels", "1,2"], "needs a modality"),
    (["robustness", "{bmm}", "--drop", "audio", "--levels", "audio=1"], "add --noise gaussian"),
    (["visualize", "spiral", "{bmm}"], "unknown figure 'spiral'"),
    (["visualize", "curves", "{empty}"], "no metrics.jsonl"),
    (["report", "{nowhere}"], "not found"),
])
def test_bad_input_is_one_clear_line(tiny, tmp_path, args, message):
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("{}\n")
    subs = {"{empty}": str(empty), "{bmm}": str(tiny["bmm"]), "{nowhere}": str(tmp_path / "nowhere")}
    res = cli(tiny, *[subs.get(a, a) for a in args], code=2)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    assert "Traceback" not in res.output


def test_evaluation_builds_no_autograd_graph(tiny):
    """Every evaluation pass (test metrics, the per-epoch imbalance monitor) runs without autograd."""
    from mmvid.engine.evaluation import evaluate_model
    from mmvid.results.evaluation import load_run

    lr = load_run(tiny["bmm"])
    grad_on = []

    def spy(inputs, y):
        grad_on.append(torch.is_grad_enabled())
        return inputs

    res = evaluate_model(lr.model, lr.loader(), lr.device, transform=spy)
    assert grad_on and not any(grad_on) and torch.is_grad_enabled()
    assert res.n == len(lr.rows) and 0 <= res.acc <= 1
