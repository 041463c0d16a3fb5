"""Diagnosing & Re-learning (Wei, Li, Feng and Hu, ECCV 2024, "Diagnosing and Re-learning for Balanced
Multimodal Learning", arXiv:2407.09705): every ``reinit_epoch`` epochs, diagnose how well each modality's
encoder has learnt from the clustering purity of its features, and softly re-initialise each encoder
towards its initial weights, the more so the more its training-set purity runs ahead of its held-out one.

Reference: GeWu-Lab/Diagnosing_Relearning_ECCV2024 (commit 59b5787) ``code/ours.py`` (``purity_score``,
``reinit_score``, ``reinit``, ``get_feature``, the schedule in ``main``; defaults of ``get_arguments`` and
``script/ours.sh``) and ``code/models/models.py`` (the features are the pooled encoder outputs a, v);
BalanceBenchmark's ``balancemm/trainer/ReLearning_trainer.py`` (commit 39ed569) computes the same.
The paper's equation numbers could not be checked against our copy of the text; the equations below are
those the reference computes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmvid.balance.base import Balancer, encoder_parameters, per_sample_pass, unwrap
from mmvid.errors import MmvidError
from mmvid.registry import BALANCERS
from mmvid.schema import SettingValueError, spec


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Clustering purity 1/N sum_k max_c |{i: cluster_i = k, y_i = c}| of (N,) cluster ids against (N,)
    labels: the accuracy of labelling each cluster by its majority class (the reference's ``purity_score``)."""
    _, y = np.unique(labels, return_inverse=True)
    _, k = np.unique(clusters, return_inverse=True)
    table = np.zeros((k.max() + 1, y.max() + 1), dtype=np.int64)
    np.add.at(table, (k, y), 1)
    return float(table.max(1).sum() / len(labels))


def feature_purity(features: np.ndarray, labels: np.ndarray, n_clusters: int, n_init: int | str = 10,
                   seed: int = 0) -> float:
    """Purity of k-means on one modality's (N, d) features, as ``reinit_score``: each feature scaled to [-1, 1]
    over the N rows (sklearn's MinMaxScaler), then KMeans(n_clusters = number of classes, random_state=0)."""
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import MinMaxScaler

    scaled = MinMaxScaler(feature_range=(-1, 1)).fit_transform(features)
    clusters = KMeans(n_clusters=n_clusters, random_state=seed, n_init=n_init).fit_predict(scaled)
    return purity(labels, clusters)


def relearn_strength(train_purity: float, val_purity: float, move_lambda: float) -> float:
    """alpha_m = tanh(lambda |P_m^train - P_m^val|): a modality whose training features cluster much better
    than its held-out ones has over-fitted (is over-trained) and is pulled further back. (torch's float64
    tanh, as the reference: math.tanh can differ in the last bit.)"""
    return float(torch.tanh(torch.tensor(move_lambda * abs(train_purity - val_purity), dtype=torch.float64)))


@torch.no_grad()
def soft_reinit(params: list[torch.nn.Parameter], init: list[torch.Tensor], alpha: float) -> None:
    """theta <- alpha theta_0 + (1 - alpha) theta for each parameter (the reference's ``reinit``); the
    optimizer's state (momentum) is left as it is, as in the reference."""
    for p, p0 in zip(params, init):
        p.copy_(alpha * p0 + (1 - alpha) * p)


@BALANCERS.register("relearn", doc="Diagnosing & Re-learning: every few epochs, softly re-initialise each encoder by its train/val k-means purity gap (Wei et al. 2024).")
class DiagnoseRelearn(Balancer):
    """Diagnosing & Re-learning. Per modality m, with z_m (N, d_m) the eval-mode features (pooled encoder
    outputs, before the fusion) of the training split (no augmentation) and of the validation split:

    * diagnosis: P_m^S = purity(KMeans_C(minmax_[-1,1](z_m^S)), y^S) for S = train, val (C classes;
      :func:`feature_purity`);
    * strength: alpha_m = tanh(lambda |P_m^train - P_m^val|), ``move_lambda`` lambda = 3;
    * re-learning: theta_m <- alpha_m theta_m^0 + (1 - alpha_m) theta_m for every trainable parameter of
      encoder m, theta_m^0 its weights before training (kept by :meth:`setup`).

    Schedule, as the reference's ``main``: after (0-based) epoch e with e > 0, e % ``reinit_epoch`` == 0
    (20), at most ``reinit_num`` (3) times, after that epoch's evaluation (here: at the start of epoch e + 1).
    k-means: ``kmeans_n_init`` restarts (10, sklearn's default before 1.4, when the reference was written;
    ``auto`` is what today's sklearn does with the reference's call), ``kmeans_seed`` 0. The training loss
    is the plain one. Across ranks, each rank encodes its share, the features are summed over ranks, and
    rank 0's purities are used by all.
    """

    needs_val_split = True  # the diagnosis compares train and validation purity

    @dataclass
    class Settings:
        move_lambda: float = spec(3.0, ge=0.0, le=1000.0, help="strength of the re-initialisation", ref="")
        reinit_epoch: int = spec(20, ge=1, le=1_000_000, help="epochs between re-initialisations", ref="")
        reinit_num: int = spec(3, ge=0, le=1_000_000, help="how many re-initialisations", ref="")
        kmeans_seed: int = spec(0, ge=0, le=2**32 - 1, help="seed of the k-means purity", ref="")
        kmeans_n_init: int | str = spec(10, help="k-means restarts: a whole number >= 1 or 'auto'", ref="")

        def __post_init__(self) -> None:
            n = self.kmeans_n_init
            if not (n == "auto" or (isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1000)):
                raise SettingValueError("kmeans_n_init", n, "a whole number in [1, 1000] or 'auto'")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        self.move_lambda = self.settings.move_lambda
        self.reinit_epoch = self.settings.reinit_epoch
        self.reinit_num = self.settings.reinit_num
        self.seed = self.settings.kmeans_seed
        self.n_init = self.settings.kmeans_n_init
        if self.reinit_epoch < 1 or self.reinit_num < 0:
            raise MmvidError(f"balance.args.reinit_epoch={self.reinit_epoch} must be >= 1 and reinit_num="
                             f"{self.reinit_num} >= 0 (epochs between re-initialisations, how many)")
        self.init: dict[str, list[torch.Tensor]] = {}
        self.last: dict[str, float] = {}  # this epoch's diagnosis, for the log

    def setup(self, model, ctx) -> None:
        for name, rows in (("train", ctx.splits.train), ("validation", ctx.splits.val)):
            if len(rows) < ctx.num_classes:
                raise MmvidError(f"balancer relearn clusters the {name} split's features into {ctx.num_classes} "
                                 f"classes but it has {len(rows)} clips (data.val_fraction={ctx.cfg.data.val_fraction}); "
                                 f"raise data.val_fraction (e.g. --set data.val_fraction=0.2) or use more clips")
        # The weights before any step; on resume the seeded build gives the same ones (checked in load_state_dict).
        self.init = {m: [p.detach().clone() for p in encoder_parameters(model, m)] for m in self.modalities}
        return None

    def due(self, epoch: int) -> bool:
        """Whether to re-initialise before ``epoch``: after epoch e = epoch - 1 as the reference's schedule."""
        e = epoch - 1
        return e > 0 and e % self.reinit_epoch == 0 and e // self.reinit_epoch <= self.reinit_num

    def features(self, ctx, rows: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Eval-mode features m -> (N, d_m) float32 and labels (N,) of ``rows``, without augmentation; each
        rank encodes its share (:func:`~mmvid.balance.base.per_sample_pass`)."""
        net = unwrap(ctx.model)

        def measure(inputs, y):
            z = net.encode(inputs)
            return {**{m: z[m].float() for m in self.modalities}, "labels": y}

        widths = {**{m: (net.encoders[m].output_dim,) for m in self.modalities}, "labels": ()}
        out = per_sample_pass(ctx, rows, measure, widths)
        return {m: out[m].float().numpy() for m in self.modalities}, out["labels"].long().numpy()

    def diagnose(self, ctx) -> dict[str, float]:
        """purity_train_m, purity_val_m and alpha_m per modality (rank 0's, on every rank)."""
        out: dict[str, float] = {}
        for split, rows in (("train", ctx.splits.train), ("val", ctx.splits.val)):
            feats, labels = self.features(ctx, rows)
            for m in self.modalities:
                out[f"purity_{split}_{m}"] = feature_purity(feats[m], labels, ctx.num_classes, self.n_init, self.seed)
        keys = list(out)
        # k-means runs on every rank from the same features; rank 0's result is shared so that all agree
        vec = torch.tensor([out[k] for k in keys], dtype=torch.float64) * float(ctx.rank == 0)
        out = dict(zip(keys, ctx.all_reduce(vec).tolist()))
        for m in self.modalities:
            out[f"alpha_{m}"] = relearn_strength(out[f"purity_train_{m}"], out[f"purity_val_{m}"], self.move_lambda)
        return out

    def on_epoch_start(self, ctx) -> None:
        super().on_epoch_start(ctx)
        self.last = {}
        if not self.due(ctx.epoch):
            return
        self.last = self.diagnose(ctx)
        for m in self.modalities:
            soft_reinit(encoder_parameters(ctx.model, m), self.init[m], self.last[f"alpha_{m}"])

    def log(self) -> dict[str, Any]:
        return {"relearn_reinit": float(bool(self.last)), **{f"relearn_{k}": float(v) for k, v in self.last.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"init_sums": {m: [float(p.double().sum()) for p in ps] for m, ps in self.init.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("init_sums")
        now = self.state_dict()["init_sums"]
        same = saved is not None and {m: len(v) for m, v in saved.items()} == {m: len(v) for m, v in now.items()} and all(
            math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9) for m in now for a, b in zip(saved[m], now[m]))
        if saved is not None and not same:
            raise MmvidError("balancer relearn: the encoders' initial weights rebuilt on resume differ from the run's "
                             "(seed, encoder or pretrained weights changed); resume with the run's own config.yaml")
