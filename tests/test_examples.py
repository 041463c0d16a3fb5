"""The example plug-ins under examples/ (a balancer, a fusion, an augmentation and a data source), used as a
user uses them: each computes what its docstring states; each trains one epoch through the CLI with --plugin
(the source example first prepares a cache from demo videos listed in a CSV) and its run is evaluated with
the same figures the training measured; all four together train under two gloo ranks; and a sweep of a recipe
folder whose recipes name them trains both runs with them. Every command runs in its own process, as a user
runs it (see tests/test_external_plugins.py), so nothing the examples register leaks into other tests.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from _examples_util import (
    AUGMENTATION,
    BALANCER,
    CSV_CACHE,
    CSV_CLASSES,
    CSV_PREPARE_ARGS,
    FUSION,
    REPO,
    SOURCE,
    TRAIN_KEYS,
    example_cases,
    write_csv_dataset,
)
from test_external_plugins import mmvid, one_line_error

CASES = {case.name: case for case in example_cases()}


def _sets(keys: dict) -> list[str]:
    return [a for k, v in keys.items() for a in ("--set", f"{k}={v}")]


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    return done


def _holds(config, part) -> bool:
    """Whether the nested mapping ``config`` has every value of ``part`` (settings it fills in aside)."""
    if isinstance(part, dict):
        return isinstance(config, dict) and all(k in config and _holds(config[k], v) for k, v in part.items())
    return config == part


def _last_metrics(run) -> dict:
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])


def _evaluate_matches_training(run, *plugins) -> dict:
    """``mmvid evaluate RUN --plugin ...``: the best checkpoint (the only epoch) scores the test split exactly as the
    training's own test evaluation did, which holds only if the plug-ins rebuilt the same model."""
    _ok(mmvid("evaluate", str(run), *[a for p in plugins for a in ("--plugin", str(p))]))
    ev, last = json.loads((run / "eval_test.json").read_text()), _last_metrics(run)
    assert ev["checkpoint_epoch"] == last["epoch"] == 0
    assert ev["accuracy"] == pytest.approx(last["test_acc"], abs=1e-9)
    assert ev["loss"] == pytest.approx(last["test_loss"], rel=1e-5)
    return ev


@pytest.fixture(scope="module")
def ws(tiny_ws, tmp_path_factory):
    """A workspace of its own holding a copy of the tiny demo cache (the csv cache prepared here must not become
    the "latest prepared" cache of the other tests' tiny workspace)."""
    path = tmp_path_factory.mktemp("examples-ws")
    (path / "caches").mkdir()
    shutil.copyfile(tiny_ws / "caches" / "demo.h5", path / "caches" / "demo.h5")
    return path


@pytest.fixture(scope="module")
def csv_cache(ws, tiny_ws, tmp_path_factory):
    """``mmvid prepare csv --root DIR --plugin examples/source.py``: three classes of demo videos listed in a CSV."""
    root = write_csv_dataset(tiny_ws / "raw" / "demo", tmp_path_factory.mktemp("csv-data"))
    done = _ok(mmvid("prepare", "csv", "-w", str(ws), "--root", str(root), "--plugin", str(SOURCE), "--name", CSV_CACHE,
                     "--workers", "1", *CSV_PREPARE_ARGS))
    return ws / "caches" / f"{CSV_CACHE}.h5", root, done


def test_the_examples_compute_what_their_docstrings_state():
    """Each example's computation against the formulas of its docstring, re-derived here on a tiny model; the
    source's bad CSV lines are one line naming the file and line."""
    script = r'''
import torch, torch.nn.functional as F
from mmvid.plugins import use
use([BALANCER, FUSION, AUGMENTATION, SOURCE])
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS
from _methods_util import attach, make_batch, make_cfg, make_model

# fusion: h = sum_m a_m (W_m z_m + b_m), a = softmax_m(v^T tanh(W_m z_m + b_m) / T)
fusion = FUSIONS.build("attention", {"audio": 6, "video": 4}, dim=5, temperature=2.0)
g = torch.Generator().manual_seed(0)
z = {"audio": torch.randn(3, 6, generator=g), "video": torch.randn(3, 4, generator=g)}
u = {m: z[m] @ fusion.project[m].weight.T + fusion.project[m].bias for m in z}
e = torch.stack([(torch.tanh(u[m]) * fusion.score.weight[0]).sum(1) / 2.0 for m in ("audio", "video")], 1)
a = torch.exp(e) / torch.exp(e).sum(1, keepdim=True)
want = a[:, :1] * u["audio"] + a[:, 1:] * u["video"]
assert torch.allclose(fusion(z), want, atol=1e-6), "fusion"
assert fusion(z).shape == (3, 5)

# augmentation: per clip, with probability p, one modality's input is zero; p=1 drops exactly one per clip
from types import SimpleNamespace
mods = ["audio", "video"]
inputs, y = make_batch(mods, b=64)

class Capture:  # stands in for the model: keeps what it was given
    def __call__(self, x, mix=None):
        self.seen = x
        return SimpleNamespace(logits=torch.zeros(len(y), 4))

for p, per_clip in ((1.0, {1}), (0.0, {0})):
    cfg = make_cfg(mods, augment="modality-dropout", augment_args={"p": p})
    aug, model = AUGMENTS.build("modality-dropout", cfg.augment, mods), Capture()
    aug.compute(model, inputs, y, SimpleNamespace(generator=torch.Generator().manual_seed(0)))
    zeroed = torch.stack([(model.seen[m].flatten(1) == 0).all(1) for m in mods])
    kept = torch.stack([(model.seen[m] == inputs[m]).flatten(1).all(1) for m in mods])
    assert set(zeroed.sum(0).tolist()) == per_clip and bool((zeroed | kept).all()), ("augmentation", p)
    assert aug.log() == {f"dropped_{m}": float(zeroed[i].float().mean()) for i, m in enumerate(mods)}

# balancer: k_m = min(1, rho_m^-gamma) on the masked (Eq. 5) scores s_m = sum_i softmax(l_m)_i[y_i] (momentum 0:
# this batch's), every gradient of encoder m scaled by k_m, the rest untouched
cfg = make_cfg(mods, balance="score-power", balance_args={"gamma": 2.0, "momentum": 0.0})
model = make_model(cfg)
bal = BALANCERS.build("score-power", cfg.balance, mods)
ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, mods), bal, [])
inputs, y = make_batch(mods, b=16)
out = model(inputs)
F.cross_entropy(out.logits, y).backward()
before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
bal.after_backward(model, out, y, ctx)
s = {}
for m in mods:
    feats = {k: v.detach() if k == m else torch.zeros_like(v) for k, v in out.raw.items()}
    s[m] = float(model.head(model.fusion(feats)).detach().softmax(1)[torch.arange(16), y].sum())
rho = {"audio": s["audio"] / s["video"], "video": s["video"] / s["audio"]}
k = {m: min(1.0, rho[m] ** -2.0) for m in mods}
assert min(k.values()) < 1.0 == max(k.values())
for n, p in model.named_parameters():
    if n in before:
        m = n.split(".")[1] if n.startswith("encoders.") else None
        assert torch.allclose(p.grad, before[n] * (k[m] if m else 1.0), rtol=1e-5, atol=1e-9), ("balancer", n)

# source: a bad CSV line, or a path leading out of the root, is one MmvidError line naming the file and line
import tempfile
from pathlib import Path
from mmvid.data.sources import get_source
from mmvid.errors import MmvidError
root = Path(tempfile.mkdtemp())
for text, says in (("a.mp4,cat\n", "clips.csv:1: expected `path,label,split`"), ("a.mp4,cat,dev\n", "clips.csv:1:"),
                   ("path,label,split\n../a.mp4,cat,train\n", "clips.csv:2: ../a.mp4 is not a path inside"),
                   ("x.mp4,cat,train\n", "lists no existing video")):
    (root / "clips.csv").write_text(text)
    try:
        get_source("csv")(root=root)
        raise AssertionError(("source accepted", text))
    except MmvidError as e:
        assert says in str(e) and "\n" not in str(e), (text, str(e))
print("checked", k)
'''
    consts = "".join(f"{n} = {str(p)!r}\n" for n, p in
                     (("BALANCER", BALANCER), ("FUSION", FUSION), ("AUGMENTATION", AUGMENTATION), ("SOURCE", SOURCE)))
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests")])
    done = subprocess.run([sys.executable, "-c", consts + script], capture_output=True, text=True, timeout=300,
                          cwd=REPO, env=env)
    assert done.returncode == 0 and "checked" in done.stdout, done.stderr[-3000:]


def test_prepare_csv_with_the_source_example_stores_the_csv_labels_and_splits_and_reports_the_missing_video(csv_cache):
    import h5py

    cache, root, done = csv_cache
    rows = [ln.split(",") for ln in (root / "clips.csv").read_text().splitlines()[1:]]
    listed = {path[:-len(".mp4")]: (label, split) for path, label, split in rows[:-1]}  # the last one has no file
    with h5py.File(cache, "r") as f:
        classes, splits = json.loads(f.attrs["class_names"]), json.loads(f.attrs["split_names"])
        stored = {n.decode(): (classes[c], splits[s]) for n, c, s in zip(f["names"][:], f["labels"][:], f["split"][:])}
    assert classes == list(CSV_CLASSES) and stored == listed
    assert f"{len(listed)}/{len(listed)} clips ok" in " ".join(done.stdout.split())
    report = json.loads(cache.with_name(cache.name + ".report.json").read_text())
    assert [e["name"] for e in report["excluded"]] == ["videos/never_recorded.mp4"]
    assert cache.with_name(cache.name + ".missing.txt").read_text() == ",".join(rows[-1]) + "\n"


def test_an_unknown_dataset_lists_a_plugin_source_and_without_the_plugin_csv_is_unknown(ws):
    line = one_line_error(mmvid("prepare", "no-such-set", "-w", str(ws), "--plugin", str(SOURCE)))
    assert "unknown dataset 'no-such-set'" in line and "csv" in line.split("choose one of:")[1].replace(",", " ").split()
    line = one_line_error(mmvid("prepare", "csv", "-w", str(ws), "--root", str(ws)))
    assert "unknown dataset 'csv'" in line


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_each_example_trains_one_epoch_with_plugin_and_evaluates_as_trained(name, ws, csv_cache):
    case = CASES[name]
    run = ws / "runs" / f"example-{name}"
    _ok(mmvid("train", "-w", str(ws), *case.cli_args(), "--run-name", run.name))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    # a run records the plug-ins its model and training use; a data source's cache needs none of its code
    assert cfg["plugins"] == ([] if name == "source" else [str(case.plugin)])
    for key, value in case.overrides.items():
        head, *rest = key.split(".")
        got = cfg[head]
        for part in rest:
            got = got[part]
        assert got == value, key
    last = _last_metrics(run)
    assert set(case.log_keys) <= set(last)
    if name == "balancer":  # the dominant modality was slowed down in some step, the other never
        assert 0 < min(last["power_coeff_audio"], last["power_coeff_video"]) < 1
    if name == "source":  # trained on the three classes the CSV listed
        assert len(_evaluate_matches_training(run, case.plugin)["per_class_accuracy"]) == len(CSV_CLASSES)
    else:
        _evaluate_matches_training(run, case.plugin)


@pytest.mark.slow
def test_two_gloo_ranks_train_on_the_csv_cache_with_the_fusion_augmentation_and_balancer(ws, csv_cache):
    keys = {k: v for case in CASES.values() for k, v in case.overrides.items()} | {"data.dataset": CSV_CACHE,
                                                                                    "data.batch_size": 8}
    plugins = [a for p in (SOURCE, FUSION, AUGMENTATION, BALANCER) for a in ("--plugin", str(p))]
    _ok(mmvid("train", "-w", str(ws), "--recipe", "demo", *plugins, *_sets({**TRAIN_KEYS, **keys}), "--gpus", "2",
              "--run-name", "example-ddp"))
    run = ws / "runs" / "example-ddp"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["gpus"] == 2 and cfg["plugins"] == [str(p) for p in (FUSION, AUGMENTATION, BALANCER)]
    assert (cfg["model"]["fusion"], cfg["augment"]["name"], cfg["balance"]["name"]) == ("attention", "modality-dropout",
                                                                                         "score-power")
    assert {"dropped_audio", "power_coeff_video"} <= set(_last_metrics(run))
    _evaluate_matches_training(run, SOURCE, FUSION, AUGMENTATION, BALANCER)


@pytest.mark.slow
def test_a_two_run_sweep_of_recipes_naming_the_examples_trains_and_evaluates(ws, tmp_path):
    """Two recipes (fusion + balancer; augmentation) in a folder given by a relative path, each naming its
    plug-ins relative to itself (``../``); the sweep is given them with --plugin too, so both runs train with
    them; each run then evaluates as it trained, and the sweep writes its table."""
    recipes = tmp_path / "mine"
    recipes.mkdir()
    uses = {"fused": ([FUSION, BALANCER], {"model": {"fusion": "attention", "fusion_args": {"dim": 32}},
                                           "balance": {"name": "score-power"}}),
            "dropout": ([AUGMENTATION], {"augment": {"name": "modality-dropout", "args": {"p": 0.3}}})}
    for row, (plugins, body) in uses.items():
        named = [os.path.relpath(p, recipes) for p in plugins]
        assert all(n.startswith("..") for n in named)
        (recipes / f"{row}.yaml").write_text(yaml.safe_dump({"extends": "demo", "plugins": named, **body}))
    sets = _sets({k: v for k, v in TRAIN_KEYS.items() if k != "epochs"})
    _ok(mmvid("sweep", "mine", "-w", str(ws), "--seeds", "1", "--epochs", "1", "--dataset", "demo", *sets,
              *[a for p in (FUSION, BALANCER, AUGMENTATION) for a in ("--plugin", str(p))], cwd=tmp_path))
    runs = {row: [r for r in (ws / "runs").iterdir() if r.name.startswith("sweep-") and f"-mine-{row}-" in r.name]
            for row in uses}
    assert all(len(found) == 1 for found in runs.values()), runs
    for row, [run] in runs.items():
        plugins, body = uses[row]
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        assert set(cfg["plugins"]) == {str(p) for p in plugins}  # what its recipe names, not every --plugin given
        assert _holds(cfg, body), (cfg, body)
        _evaluate_matches_training(run, *cfg["plugins"])
    assert len(list((ws / "sweeps").rglob("table.md"))) == 1


@pytest.mark.slow
def test_each_example_through_the_python_api_prepares_trains_and_evaluates(ws, tiny_ws, tmp_path):
    """The same as the CLI tests above, from a script (a notebook's way): ``mmvid.prepare`` with the source
    example, then ``mmvid.train(plugins=[...], **keys)`` of each example and ``mmvid.evaluate`` of its run, in a
    process of its own. Each evaluation scores the test split exactly as its training did."""
    root = write_csv_dataset(tiny_ws / "raw" / "demo", tmp_path / "csv-data")
    cases = [{"name": c.name, "plugin": str(c.plugin), "keys": {**c.keys(), **({"data.dataset": "api-csv"}
                                                                               if c.name == "source" else {})}}
             for c in CASES.values()]
    script = f'''
import json, mmvid
mmvid.prepare("csv", workspace={str(ws)!r}, root={str(root)!r}, name="api-csv", plugins=[{str(SOURCE)!r}],
              workers=1, image_size=32, fps=0, sample_rate=16000, clip_seconds=2, hop=256, quiet=True, progress=False)
out = {{}}
for case in {cases!r}:
    run = mmvid.train(recipe="demo", workspace={str(ws)!r}, run_name="api-" + case["name"], plugins=[case["plugin"]],
                      quiet=True, progress=False, **case["keys"])
    ev = mmvid.evaluate(run)
    out[case["name"]] = dict(acc=ev["accuracy"], loss=ev["loss"], last=run.metrics[-1], plugins=run.config.plugins)
print("RESULT " + json.dumps(out))
'''
    env = {k: v for k, v in os.environ.items() if k != "MMVID_PLUGINS"}
    done = _ok(subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                              text=True, timeout=900))
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert set(out) == set(CASES)
    for name, r in out.items():
        # what the run uses: not the source example imported before it (its cache needs none of its code)
        assert r["plugins"] == ([] if name == "source" else [str(CASES[name].plugin)]), name
        assert r["acc"] == pytest.approx(r["last"]["test_acc"], abs=1e-9), name
        assert r["loss"] == pytest.approx(r["last"]["test_loss"], rel=1e-5), name
        assert set(CASES[name].log_keys) <= set(r["last"]), name
    assert yaml.safe_load((ws / "runs" / "api-source" / "config.yaml").read_text())["data"]["dataset"] == "api-csv"
