"""`mmvid diagnose`: exact Shapley values over modality coalitions (Eq. 5 masking), linear probes against
runs of each modality alone, memorisation and rho curves, the bounded utilisation rate, the page."""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
import torch
from rich.console import Console

from mmvid.errors import MmvidError
from mmvid.results.diagnosis.command import run_diagnose, try_comparison
from mmvid.results.diagnosis.diagnose import diagnose_run
from mmvid.results.diagnosis.passes import split_pass
from mmvid.results.diagnosis.probes import linear_probe
from mmvid.results.diagnosis.runs import alone_config, epochs_for_budget
from mmvid.results.diagnosis.shapley import balancebenchmark_shapley, coalitions, shapley
from mmvid.results.diagnosis.utilisation import utilisation

QUIET = Console(quiet=True)


def permutation_shapley(values, mods):
    """Shapley's other definition: the marginal contribution of m averaged over all M! orders of arrival."""
    phi = {m: 0.0 for m in mods}
    orders = list(itertools.permutations(mods))
    for order in orders:
        before = frozenset()
        for m in order:
            phi[m] += (values[before | {m}] - values[before]) / len(orders)
            before = before | {m}
    return phi


@pytest.mark.parametrize("mods", [["audio", "video"], ["audio", "video", "flow"]])
def test_shapley_is_exact_and_efficient(mods):
    rng = np.random.default_rng(len(mods))
    values = {s: rng.random(7) for s in coalitions(mods)}
    assert len(values) == 2 ** len(mods)
    phi = shapley(values, mods)
    # efficiency: the values add up to v(M) - v(empty), sample by sample
    np.testing.assert_allclose(sum(phi.values()), values[frozenset(mods)] - values[frozenset()], atol=1e-12)
    by_order = permutation_shapley(values, mods)
    for m in mods:
        np.testing.assert_allclose(phi[m], by_order[m], atol=1e-12)


def test_balancebenchmark_figure_follows_its_calculate_shapley():
    """Their loop (balancemm/evaluation/modalitys.py, include_empty=False): for each modality, the coalitions
    of the others of size 1..M-1, each adding acc(S + m) - acc(S) unweighted."""
    mods = ["audio", "video", "flow"]
    rng = np.random.default_rng(5)
    acc = {s: float(rng.random()) for s in coalitions(mods)}
    theirs = {}
    for m in mods:
        rest = [k for k in mods if k != m]
        combos = [list(c) for r in range(1, len(rest) + 1) for c in itertools.combinations(rest, r)]
        theirs[m] = sum(acc[frozenset(c + [m])] - acc[frozenset(c)] for c in combos)
    assert balancebenchmark_shapley(acc, mods) == pytest.approx(theirs, abs=1e-12)
    two = {s: v for s, v in acc.items() if "flow" not in s}
    assert balancebenchmark_shapley(two, ["audio", "video"])["audio"] == pytest.approx(
        acc[frozenset({"audio", "video"})] - acc[frozenset({"video"})])


def test_utilisation_is_bounded_and_wu_et_al_where_they_agree():
    rng = np.random.default_rng(0)
    for a_all, a_without in rng.random((200, 2)):
        u = utilisation(a_all, a_without)
        assert -1.0 <= u <= 1.0
        if a_all >= a_without:  # Wu et al. 2022: (A(M) - A(M minus m)) / A(M)
            assert u == pytest.approx((a_all - a_without) / a_all)
    assert utilisation(0.1, 0.9) == pytest.approx(-8 / 9)  # Wu et al.'s form would give -8
    assert utilisation(0.0, 0.0) == 0.0


def test_linear_probe_is_reproducible_and_learns_a_separable_task():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 5)) + 4 * np.eye(3, 5)[y]
    a = linear_probe(x[:80], y[:80], x[80:], y[80:], 3)
    b = linear_probe(x[:80], y[:80], x[80:], y[80:], 3)
    assert a == b and a["test"] >= 0.9


@pytest.fixture(scope="module")
def demo_ws(tmp_path_factory):
    from mmvid.workflows import run_prepare

    ws = tmp_path_factory.mktemp("diag")
    run_prepare(QUIET, ws, "demo", clips=300, progress=False)
    return ws


def test_a_model_that_ignores_video_gives_it_zero_shapley_value(demo_ws):
    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info
    from mmvid.engine.loaders import make_loader
    from mmvid.engine.model import build_model

    info = read_info(demo_ws / "caches" / "demo.h5")
    cfg = resolve_config("demo", {"model.width": 4})
    torch.manual_seed(0)
    model = build_model(cfg, info.num_classes)
    d_audio = model.encoders["audio"].output_dim
    with torch.no_grad():
        model.head.weight[:, d_audio:] = 0.0  # concat head: the video columns
    rows = info.indices("test")[:40]
    sp = split_pass(model, make_loader(info, rows, cfg, train=False), torch.device("cpu"), rows)
    phi = shapley(sp.prob, ["audio", "video"])
    assert np.all(phi["video"] == 0.0)
    assert np.abs(phi["audio"]).max() > 0
    np.testing.assert_allclose(phi["audio"], sp.prob[frozenset({"audio", "video"})] - sp.prob[frozenset()], atol=1e-12)


@pytest.fixture(scope="module")
def diagnosed(demo_ws):
    """`mmvid diagnose --dataset demo` on 300 demo clips: a 3-epoch fused run and one run per modality alone."""
    return run_diagnose(QUIET, demo_ws, dataset="demo", epochs=3, sets={"model.width": 8, "data.batch_size": 16})


def test_diagnose_a_demo_run_end_to_end(diagnosed):
    data = json.loads((diagnosed.out / "diagnosis.json").read_text())
    mods = data["modalities"]
    assert mods == ["audio", "video"]
    for split in ("train", "test"):
        sh = data["shapley"][split]
        # efficiency on the means: sum phi = v(M) - v(empty)
        assert sum(sh["phi"].values()) == pytest.approx(sh["value_full"] - sh["value_empty"], abs=1e-9)
        assert sum(sh["per_class"][c]["n"] for c in sh["per_class"]) == sh["n"]
        assert all(-1 <= u <= 1 for u in data["utilisation"][split].values())
        for d in sh["most_dominated_samples"]:
            assert d["class"] in data["class_names"] and 0 < d["share"] <= 1
    for m in mods:
        p = data["probes"][m]
        assert {"fused_encoder", "alone_encoder", "alone_run"} <= set(p) and p["alone_epochs"] == 3
        assert (diagnosed.out / f"alone-{m}" / "checkpoint_last.pt").exists()
    # the demo builds audio as the modality learned first (its chords are learned within two epochs)
    assert data["curves"]["learned_first"] == "audio"
    assert data["curves"]["early_epochs"] == 2
    assert len(data["curves"]["epoch"]) == 3 and len(data["curves"]["train_utilisation_audio"]) == 3
    assert {i["pattern"] for i in data["measured"]} >= {"dominance", "underlearned", "memorising", "order"}
    for i in data["measured"]:  # methods are named only where the pattern they target was measured
        if i["pattern"] == "underlearned":
            assert ("methods" in i) == (i["probe_difference"] < 0)
    named = [i for i in data["measured"] if i["pattern"] == "memorising" and "methods" in i]
    assert len(named) <= 1 and all(i["gap"] == max(j["gap"] for j in data["measured"] if j["pattern"] == "memorising")
                                   for i in named)


def test_per_sample_values_are_saved_and_add_up(diagnosed):
    import csv

    rows = list(csv.DictReader(open(diagnosed.out / "samples_test.csv")))
    data = json.loads((diagnosed.out / "diagnosis.json").read_text())
    assert len(rows) == data["shapley"]["test"]["n"]
    for r in rows:  # efficiency, per clip: phi_audio + phi_video = v(audio+video) - v(none)
        assert float(r["phi_audio"]) + float(r["phi_video"]) == pytest.approx(
            float(r["v_audio+video"]) - float(r["v_none"]), abs=1e-5)
    assert np.mean([float(r["phi_audio"]) for r in rows]) == pytest.approx(data["shapley"]["test"]["phi"]["audio"], abs=1e-5)


def test_the_budget_picks_the_epochs_that_fit(demo_ws):
    from mmvid.config import resolve_config
    from mmvid.data.cache import read_info

    info = read_info(demo_ws / "caches" / "demo.h5")
    cfg = resolve_config("demo", {"model.width": 4, "data.batch_size": 16, "data.dataset": "demo"})
    alone = [alone_config(cfg, m) for m in cfg.data.modalities]
    assert epochs_for_budget(cfg, alone, info, 1e-4, QUIET)[0] == 1  # nothing fits: still one epoch
    epochs, info_ = epochs_for_budget(cfg, alone, info, 1e4, QUIET)
    assert epochs == cfg.epochs and set(info_["step_seconds"]) == {"audio+video", "audio", "video"}
    assert all(v > 0 for v in info_["step_seconds"].values())


def test_the_page_holds_every_figure(diagnosed):
    html = (diagnosed.out / "diagnosis.html").read_text()
    imgs = re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html)
    assert imgs == ["shapley_per_class", "probes", "memorisation", "rho"]
    assert all((diagnosed.out / "figures" / f"{n}.png").stat().st_size > 5000 for n in imgs)
    assert "http" not in html.split("<body>", 1)[1].split("data:image")[0]  # self-contained: nothing fetched


def test_alone_runs_and_probes_are_reproducible(diagnosed, demo_ws):
    """The same command again reuses the finished runs; diagnosing into a fresh folder retrains the alone
    runs from the seed and gets the same probes and accuracies."""
    first = json.loads((diagnosed.out / "diagnosis.json").read_text())
    again = diagnose_run(diagnosed.run, QUIET, out=demo_ws / "again")
    assert again.data["probes"] == first["probes"]
    assert again.data["shapley"] == first["shapley"]


@pytest.mark.parametrize("args, msg", [
    ([], "give a RUN to diagnose or --dataset NAME"),
    (["x", "--dataset", "demo"], "give a RUN to diagnose or --dataset NAME"),
    (["--dataset", "demo", "--try", "bmm,nope"], "--try nope: no such method recipe; choose from"),
    (["--dataset", "demo", "--minutes", "-1"], "--minutes"),
    (["some-run", "--epochs", "3"], "a RUN given is diagnosed as it was trained"),
])
def test_cli_errors_are_one_line(demo_ws, capsys, args, msg):
    from mmvid.cli import main

    assert main(["diagnose", "-w", str(demo_ws), *args]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert msg in err and "Traceback" not in err and len(err) < 400


def test_try_ranks_methods_through_the_sweep(diagnosed, demo_ws):
    """--try bmm: the plain fused model and B-MM on the diagnosed run's data and settings, one seed each,
    through `mmvid sweep` (its table beside the diagnosis)."""
    from mmvid.results.evaluation import load_run

    cfg = load_run(diagnosed.run, "test", "cpu", checkpoint="last").cfg
    assert cfg.epochs == 3
    cfg.epochs = 1  # what is tested is that the runs take the diagnosed run's settings, not how long they train
    res = try_comparison(QUIET, demo_ws, cfg, ["bmm"], 1, diagnosed.out / "try-test")
    assert sorted(r["row"] for r in res["table"]) == ["bmm", "plain"]
    runs = sorted(p.name for p in (demo_ws / "runs").iterdir() if p.name.startswith("sweep-"))
    assert len(runs) == 2
    for name in runs:
        saved = (demo_ws / "runs" / name / "config.yaml").read_text()
        assert "width: 8" in saved and "batch_size: 16" in saved and "epochs: 1" in saved
    assert any(p.endswith("table.md") for p in res["files"])


def test_diagnose_a_folder_of_real_clips_from_the_command_line(shared_data, tmp_path, capsys):
    """A new user's path: `mmvid prepare folder` on their own clips (real CREMA-D clips decoded here, two
    classes), then `mmvid diagnose --dataset folder` trains the short runs and writes the page."""
    from mmvid.cli import main

    crema = shared_data / "crema_d" / "VideoFlash"
    for cls, emotions in (("calm", ("NEU", "HAP", "SAD")), ("tense", ("ANG", "DIS", "FEA"))):
        (tmp_path / "clips" / cls).mkdir(parents=True)
        for e in emotions:
            (tmp_path / "clips" / cls / f"1001_DFA_{e}_XX.flv").symlink_to(crema / f"1001_DFA_{e}_XX.flv")
    ws = str(tmp_path / "ws")
    assert main(["prepare", "folder", "--root", str(tmp_path / "clips"), "-w", ws, "--image-size", "32",
                 "--clip-seconds", "2"]) == 0
    code = main(["diagnose", "--dataset", "folder", "-w", ws, "--epochs", "2", "--set", "model.encoder=small",
                 "--set", "model.width=4", "--set", "data.batch_size=2", "--set", "data.val_fraction=0"])
    out = capsys.readouterr()
    assert code == 0, out.err
    [run] = [p for p in (tmp_path / "ws" / "runs").iterdir() if p.name.startswith("diagnose-folder-")]
    data = json.loads((run / "diagnosis" / "diagnosis.json").read_text())
    assert data["class_names"] == ["calm", "tense"] and data["shapley"]["train"]["n"] + data["shapley"]["test"]["n"] == 6
    assert (run / "diagnosis" / "diagnosis.html").stat().st_size > 20000
    assert "Shapley share" in " ".join(out.out.split())
