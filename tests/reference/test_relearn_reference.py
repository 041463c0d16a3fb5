"""Diagnosing & Re-learning against its reference, GeWu-Lab/Diagnosing_Relearning_ECCV2024 (commit 59b5787),
re-implemented below from reading ``code/ours.py``: ``get_feature`` (eval mode, no gradient, the pooled encoder
outputs a, v of every clip of a loader), ``purity_score`` (labels renumbered 0..K-1, each cluster voted to the
label with the largest histogram bin, accuracy of the voted labels), ``reinit_score`` (per feature set:
MinMaxScaler to [-1, 1], ``KMeans(n_clusters=n_classes, random_state=0).fit_predict``, purity against its
split's labels; weight = ``torch.tanh(torch.tensor(move_lambda * |P_train - P_val|))``), ``reinit`` (every
parameter of ``audio_net`` / ``visual_net``: ``w * init + (1 - w) * current``, init from the state dict saved
right after the model was built) and the schedule of ``main`` (after epoch e: e % reinit_epoch == 0 and e > 0,
counted, at most reinit_num times). BalanceBenchmark's ``ReLearning_trainer.py`` computes the same.

The reference's KMeans call leaves ``n_init`` to sklearn's default: 10 before sklearn 1.4 (mmvid's default,
``kmeans_n_init: 10``), 'auto' since; both are checked. mmvid's balancer otherwise runs with its defaults.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import numpy as np
import pytest
import sklearn
import torch
from _methods_util import CLASSES, attach, make_batch, make_cfg, make_model

from mmvid.balance.relearn import feature_purity, purity
from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
AV = ["audio", "video"]
N_TRAIN, N_VAL, BATCH = 40, 24, 8


# ----------------------------------------------------------------------------- the reference, re-implemented


def ref_purity_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """purity_score: renumber the labels, give every cluster its histogram's arg-max label, score accuracy."""
    y_true = y_true.copy()
    uniq = np.unique(y_true)
    for new, old in enumerate(uniq):
        y_true[y_true == old] = new
    labels = np.unique(y_true)
    edges = np.append(labels, labels.max() + 1)
    voted = np.zeros(y_true.shape)
    for c in np.unique(y_pred):
        counts, _ = np.histogram(y_true[y_pred == c], bins=edges)
        voted[y_pred == c] = np.argmax(counts)
    return float(np.mean(voted == y_true))


def ref_cluster_purity(features: np.ndarray, labels: np.ndarray, n_init) -> float:
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    kwargs = {} if n_init is None else {"n_init": n_init}  # None: the reference's literal call (today's default)
    return ref_purity_score(labels, KMeans(n_clusters=CLASSES, random_state=0, **kwargs).fit_predict(scaled))


def ref_reinit_score(train, val, move_lambda=3.0, n_init=10):
    """(train (a, v, label), val (a, v, label)) -> purities [train_a, val_a, train_v, val_v], weight_a, weight_v."""
    (ta, tv, tl), (va, vv, vl) = train, val
    pur = [ref_cluster_purity(f, lab, n_init) for f, lab in ((ta, tl), (va, vl), (tv, tl), (vv, vl))]
    w_a = torch.tanh(torch.tensor(move_lambda * np.abs(pur[0] - pur[1])))
    w_v = torch.tanh(torch.tensor(move_lambda * np.abs(pur[2] - pur[3])))
    return pur, w_a, w_v


class RefModel(torch.nn.Module):
    """AVClassifier's names: audio_net / visual_net (the encoders, pooled outputs a, v) and head."""

    def __init__(self, model):
        super().__init__()
        self.audio_net, self.visual_net, self.head = model.encoders["audio"], model.encoders["video"], model.head

    def forward(self, audio, visual):
        a, v = self.audio_net(audio), self.visual_net(visual)
        return self.head(torch.cat((a, v), 1)), a, v


def ref_get_feature(ref: RefModel, data, labels, rows):
    ref.eval()
    aa, vv, ll = [], [], []
    with torch.no_grad():
        for i in range(0, len(rows), BATCH):
            r = list(rows[i:i + BATCH])
            _, a, v = ref(data["audio"][r], data["video"][r])
            aa.append(a.data.cpu())
            vv.append(v.data.cpu())
            ll.append(labels[r])
    return torch.cat(aa).numpy(), torch.cat(vv).numpy(), torch.cat(ll).numpy()


def ref_reinit(ref: RefModel, checkpoint: dict, w_a, w_v) -> None:
    for name, param in ref.named_parameters():
        w = w_a if "audio_net" in name else w_v if "visual_net" in name else None
        if w is not None:
            param.data = w * checkpoint[name] + (1 - w) * param.data


def ref_schedule(epochs: int, reinit_epoch: int, reinit_num: int) -> list[int]:
    """The epochs e after which main() re-initialises."""
    out, flag = [], 0
    for epoch in range(epochs):
        if (epoch % reinit_epoch == 0) & (epoch > 0):
            flag += 1
            if flag <= reinit_num:
                out.append(epoch)
    return out


# ----------------------------------------------------------------------------- set-up


def setup_run(args=None):
    """Tiny concat model, the balancer set up on its initial weights (the reference's init_para.pkl), then the
    encoders moved away from them (standing in for 20 epochs of training); the reference on a copy."""
    cfg = make_cfg(AV, balance="relearn", balance_args=args)
    model = make_model(cfg)
    data, _ = make_batch(AV, N_TRAIN + N_VAL, seed=3)
    labels = torch.randint(0, CLASSES, (N_TRAIN + N_VAL,), generator=torch.Generator().manual_seed(1))
    bal = BALANCERS.build("relearn", cfg.balance, AV)
    aug = AUGMENTS.build("none", cfg.augment, AV)
    ctx = attach(cfg, model, aug, bal, [(None, labels[:N_VAL])])  # splits of N_VAL clips while setting up
    checkpoint = {f"{'audio_net' if m == 'audio' else 'visual_net'}.{n}": p.detach().clone()
                  for m in AV for n, p in model.encoders[m].named_parameters()}
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.encoders.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    ctx.splits = SimpleNamespace(train=np.arange(N_TRAIN), val=np.arange(N_TRAIN, N_TRAIN + N_VAL), test=np.arange(0))
    ctx.loader = lambda rows, train=False, shuffle=False: [
        ({m: data[m][list(rows[i:i + BATCH])] for m in AV}, labels[list(rows[i:i + BATCH])]) for i in range(0, len(rows), BATCH)]
    ref = RefModel(copy.deepcopy(model))
    return model, bal, ctx, ref, checkpoint, (data, labels)


def run_both(args=None, ref_n_init=10):
    model, bal, ctx, ref, checkpoint, (data, labels) = setup_run(args)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ctx.epoch = 21  # after epoch 20: the first re-initialisation
    bal.on_epoch_start(ctx)
    train = ref_get_feature(ref, data, labels, ctx.splits.train)
    val = ref_get_feature(ref, data, labels, ctx.splits.val)
    pur, w_a, w_v = ref_reinit_score(train, val, n_init=ref_n_init)
    ref_reinit(ref, checkpoint, w_a, w_v)
    return model, bal, ref, before, pur, (w_a, w_v)


# ----------------------------------------------------------------------------- tests


def test_purity_matches_the_reference_voting():
    rng = np.random.default_rng(0)
    for trial in range(200):
        n = int(rng.integers(1, 60))
        labels = rng.choice([0, 2, 3, 7, 9], size=n)  # missing label values, as the reference renumbers
        clusters = rng.integers(0, int(rng.integers(1, 8)), size=n) * 3  # sparse cluster ids, ties in votes
        assert purity(labels, clusters) == ref_purity_score(labels, clusters), trial


def test_diagnosis_strengths_and_reinit_match_the_reference():
    model, bal, ref, before, pur, (w_a, w_v) = run_both()
    log = bal.log()
    assert log["relearn_reinit"] == 1.0
    ours = [log["relearn_purity_train_audio"], log["relearn_purity_val_audio"],
            log["relearn_purity_train_video"], log["relearn_purity_val_video"]]
    assert ours == pur  # the same k-means on the same features: exactly equal
    assert log["relearn_alpha_audio"] == float(w_a) and log["relearn_alpha_video"] == float(w_v)
    assert 0 < max(float(w_a), float(w_v)) < 1, "the inputs must give a non-trivial strength"
    ref_params = dict(ref.named_parameters())
    for m, prefix in (("audio", "audio_net"), ("video", "visual_net")):
        for n, p in model.encoders[m].named_parameters():
            assert torch.equal(p.detach(), ref_params[f"{prefix}.{n}"].detach()), n  # the same float32 operations
    for n, p in model.named_parameters():  # the head (and everything outside the encoders) is untouched
        if not n.startswith("encoders."):
            assert torch.equal(p.detach(), before[n]), n
    moved = [n for n, p in model.named_parameters() if n.startswith("encoders.") and not torch.equal(p.detach(), before[n])]
    assert moved, "the encoders were pulled towards their initial weights"


@pytest.mark.skipif(tuple(int(x) for x in sklearn.__version__.split(".")[:2]) < (1, 4),
                    reason="KMeans' default n_init is 'auto' only from sklearn 1.4")
def test_n_init_auto_is_the_reference_call_on_todays_sklearn():
    _, bal, _, _, pur, (w_a, w_v) = run_both({"kmeans_n_init": "auto"}, ref_n_init=None)
    log = bal.log()
    assert [log[f"relearn_purity_{s}_{m}"] for m in AV for s in ("train", "val")] == pur
    assert log["relearn_alpha_audio"] == float(w_a) and log["relearn_alpha_video"] == float(w_v)


def test_feature_purity_is_the_reference_statistic_on_separable_features():
    rng = np.random.default_rng(2)
    labels = np.repeat(np.arange(CLASSES), 10)
    far = (np.eye(CLASSES, 6)[labels] * 50 + rng.normal(size=(len(labels), 6))).astype(np.float32)
    assert feature_purity(far, labels, CLASSES) == 1.0 == ref_cluster_purity(far, labels, 10)
    noise = rng.normal(size=(len(labels), 6)).astype(np.float32)
    assert feature_purity(noise, labels, CLASSES) == ref_cluster_purity(noise, labels, 10) < 1.0


@pytest.mark.parametrize("reinit_epoch,reinit_num", [(20, 3), (15, 2), (1, 0), (1, 4), (7, 100)])
def test_schedule_matches_the_reference(reinit_epoch, reinit_num):
    bal = BALANCERS.build("relearn", make_cfg(AV, balance="relearn", balance_args={
        "reinit_epoch": reinit_epoch, "reinit_num": reinit_num}).balance, AV)
    ours = [epoch - 1 for epoch in range(100) if bal.due(epoch)]
    assert ours == ref_schedule(99, reinit_epoch, reinit_num)


def test_no_reinit_between_diagnoses():
    model, bal, ctx, *_ = setup_run()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for epoch in (0, 1, 20, 22):
        ctx.epoch = epoch
        bal.on_epoch_start(ctx)
        assert bal.log() == {"relearn_reinit": 0.0}
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_resume_checks_the_rebuilt_initial_weights():
    _, bal, *_ = setup_run()
    state = bal.state_dict()
    bal.load_state_dict(state)  # the same seeded build: accepted
    state["init_sums"]["audio"][0] += 1.0
    with pytest.raises(MmvidError, match="initial weights"):
        bal.load_state_dict(state)


def test_bad_options_and_small_splits_are_one_line_errors():
    for args, match in (({"kmeans_n_init": 0}, "kmeans_n_init"), ({"reinit_epoch": 0}, "reinit_epoch")):
        with pytest.raises(MmvidError, match=match):
            BALANCERS.build("relearn", make_cfg(AV, balance="relearn", balance_args=args).balance, AV)
    cfg = make_cfg(AV, balance="relearn")
    model = make_model(cfg)
    bal = BALANCERS.build("relearn", cfg.balance, AV)
    ctx = attach(cfg, model, AUGMENTS.build("none", cfg.augment, AV), BALANCERS.build("none", cfg.balance, AV), [])
    ctx.splits = SimpleNamespace(train=np.arange(20), val=np.arange(2), test=np.arange(0))
    with pytest.raises(MmvidError, match="val_fraction"):
        bal.setup(model, ctx)


@pytest.mark.slow
def test_relearn_reinitialises_during_a_demo_run(tiny_ws, tmp_path):
    """Through the registry and the engine loop: the scheduled diagnosis runs on the real train/val splits,
    its purities and strengths reach metrics.jsonl, and only on the scheduled epoch."""
    import json

    from mmvid.config import resolve_config
    from mmvid.engine.loop import train

    cache = tiny_ws / "caches" / "demo.h5"  # the session's 60-clip demo cache (tests/conftest.py), read only
    cfg = resolve_config("demo", {"epochs": 3, "model.width": 4, "data.batch_size": 16, "data.val_fraction": 0.25,
                                  "balance.name": "relearn", "balance.args": {"reinit_epoch": 1, "reinit_num": 1}})
    train(cfg, cache, tmp_path / "run", progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [ln["relearn_reinit"] for ln in lines] == [0.0, 0.0, 1.0]  # after epoch 1 (e > 0), once
    for m in AV:
        assert 0.0 < lines[2][f"relearn_purity_train_{m}"] <= 1.0 and 0.0 < lines[2][f"relearn_purity_val_{m}"] <= 1.0
        assert 0.0 <= lines[2][f"relearn_alpha_{m}"] < 1.0
