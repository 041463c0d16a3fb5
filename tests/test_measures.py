"""mmvid.measures (Shapley values, rho, the eval-mode switch) and the per-sample pass of mmvid.balance.base,
each against a computation written independently here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mmvid.balance.base import per_sample_pass
from mmvid.measures import (
    coalitions,
    eval_mode,
    imbalance_factor,
    modality_ratios,
    shapley_matrix,
    shapley_values,
    training_mode,
)
from mmvid.registry import EpochMeans, Plugin

AVF = ["audio", "video", "flow"]


def shapley_by_orderings(values, mods):
    """The Shapley value as the mean marginal contribution over every order in which the modalities join."""
    v = {frozenset(s): x for s, x in values.items()}
    phi = {m: 0.0 for m in mods}
    orders = list(itertools.permutations(mods))
    for order in orders:
        before = frozenset()
        for m in order:
            phi[m] = phi[m] + (v[before | {m}] - v[before]) / len(orders)
            before = before | {m}
    return phi


@pytest.mark.parametrize("mods", [AVF[:2], AVF, AVF + ["text"]], ids=["2", "3", "4"])
def test_shapley_values_equal_the_mean_over_orderings_for_numpy_and_torch(mods):
    rng = np.random.default_rng(len(mods))
    values = {s: rng.random(5) for s in coalitions(mods, empty=True)}
    want = shapley_by_orderings(values, mods)
    got = shapley_values(values, mods)
    for m in mods:
        np.testing.assert_allclose(got[m], want[m], rtol=0, atol=1e-12)
    as_torch = shapley_values({s: torch.from_numpy(x) for s, x in values.items()}, mods)
    for m in mods:
        assert isinstance(as_torch[m], torch.Tensor)
        np.testing.assert_allclose(as_torch[m].numpy(), want[m], rtol=0, atol=1e-12)
    # efficiency: the values share out v(M) - v(empty)
    np.testing.assert_allclose(sum(got.values()), values[tuple(mods)] - values[()], atol=1e-12)


def test_missing_empty_coalition_counts_as_zero_and_keys_may_be_frozensets():
    values = {frozenset(s): float(len(s)) ** 2 for s in coalitions(AVF)}
    got = shapley_values(values, AVF)
    want = shapley_by_orderings({**values, frozenset(): 0.0}, AVF)
    assert got == {m: pytest.approx(want[m], abs=1e-12) for m in AVF}


def test_without_the_empty_coalition_the_sum_runs_over_nonempty_coalitions_only():
    """BalanceBenchmark's Calculate_Shapley_Sample: for each m the weighted v(S + m) - v(S) over non-empty S."""
    rng = np.random.default_rng(0)
    values = {s: float(rng.random()) for s in coalitions(AVF)}
    got = shapley_values(values, AVF, include_empty=False)
    n = len(AVF)
    for m in AVF:
        others = [k for k in AVF if k != m]
        want = 0.0
        for r in range(1, n):
            for s in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
                with_m = tuple(k for k in AVF if k in s or k == m)
                want += w * (values[with_m] - values[s])
        assert got[m] == pytest.approx(want, abs=1e-12)


def test_shapley_matrix_is_the_linear_map_of_shapley_values():
    rng = np.random.default_rng(1)
    values = {s: float(rng.random()) for s in coalitions(AVF)}
    a = shapley_matrix(AVF)
    phi = shapley_values(values, AVF)
    for m in AVF:
        assert set(a[m]) == set(values)
        assert sum(a[m][s] * values[s] for s in values) == pytest.approx(phi[m], abs=1e-12)
    assert shapley_matrix(["a", "v"])["a"] == {("a",): 0.5, ("v",): -0.5, ("a", "v"): 0.5}


def test_rho_is_eq6_for_two_modalities_under_either_baseline():
    scores = {"audio": 30.0, "video": 12.0}
    for baseline in ("all", "others"):
        r = modality_ratios(scores, baseline)
        assert r == {"audio": pytest.approx(2.5), "video": pytest.approx(0.4)}
    assert imbalance_factor(scores) == pytest.approx(2.5)
    assert imbalance_factor({"video": 12.0, "audio": 30.0}) == pytest.approx(0.4)  # first over second


def test_rho_for_three_modalities_all_against_others():
    scores = {"audio": 6.0, "video": 2.0, "flow": 4.0}
    assert modality_ratios(scores) == {"audio": pytest.approx(1.5), "video": pytest.approx(0.5), "flow": pytest.approx(1.0)}
    assert modality_ratios(scores, "others") == {"audio": pytest.approx(2.0), "video": pytest.approx(0.4),
                                                 "flow": pytest.approx(1.0)}
    assert imbalance_factor(scores) == pytest.approx(3.0)  # max_m s_m / min_m s_m
    rng = np.random.default_rng(2)
    for _ in range(50):  # both baselines name the same leading modalities
        s = dict(zip(AVF + ["text"], rng.random(4).tolist()))
        assert ({m for m, r in modality_ratios(s).items() if r > 1}
                == {m for m, r in modality_ratios(s, "others").items() if r > 1})
    with pytest.raises(ValueError, match="baseline"):
        modality_ratios(scores, "mean")


def test_eval_mode_restores_each_module_also_when_the_block_raises():
    net, head = nn.Sequential(nn.Linear(2, 2), nn.Dropout()), nn.Linear(2, 2)
    head.eval()
    with eval_mode(net, head, None):
        assert not net.training and not net[1].training and not head.training
    assert net.training and net[1].training and not head.training
    with pytest.raises(RuntimeError, match="boom"):
        with eval_mode(net):
            raise RuntimeError("boom")
    assert net.training
    with training_mode(True, head):
        assert head.training
    assert not head.training


class _Ctx:
    """What per_sample_pass reads of the training context: a loader over rows, the device, rank and world."""

    def __init__(self, model, data, rank=0, world_size=1, batch=3):
        self.model, self.data, self.rank, self.world_size, self.batch = model, data, rank, world_size, batch
        self.device = torch.device("cpu")
        self.modes = []

    def loader(self, rows, train=False):
        rows = np.asarray(rows)
        for i in range(0, len(rows), self.batch):
            part = torch.as_tensor(rows[i:i + self.batch])
            yield {"audio": self.data[part]}, part * 10

    def all_reduce(self, t):
        return t  # one rank at a time here; the test sums the ranks itself


def test_per_sample_pass_gives_every_row_once_across_ranks_in_eval_mode():
    data = torch.arange(14.0).view(7, 2)
    model = nn.Dropout()
    rows = np.array([6, 2, 0, 5, 1])
    seen = []

    def measure(inputs, y):
        seen.append(model.training)
        return {"x": inputs["audio"].sum(1), "pair": torch.stack([y.double(), y.double() + 1], 1)}

    widths = {"x": (), "pair": (2,)}
    whole = per_sample_pass(_Ctx(model, data), rows, measure, widths)
    assert whole["x"].tolist() == [float(data[r].sum()) for r in rows]
    assert whole["pair"].tolist() == [[10.0 * r, 10.0 * r + 1] for r in rows]
    assert whole["x"].dtype == torch.float64 and seen and not any(seen) and model.training
    parts = [per_sample_pass(_Ctx(model, data, rank, 3), rows, measure, widths) for rank in range(3)]
    for k in widths:
        assert torch.equal(sum(p[k] for p in parts), whole[k])
    # more ranks than rows: a rank without rows still returns zeros of the full shape
    empty = per_sample_pass(_Ctx(model, data, 6, 7), rows, measure, widths)
    assert empty["pair"].shape == (5, 2) and not empty["pair"].any()


def test_plugin_epoch_statistics_are_reset_each_epoch_and_averaged_in_log():
    plug = Plugin()
    assert plug.log() == {}
    plug.stats.add({"k": 1.0})
    plug.stats.add({"k": 3.0, "j": 2.0})
    assert plug.log() == {"k": 2.0, "j": 1.0}  # each name divided by the number of add calls
    plug.on_epoch_start(None)
    assert plug.log() == {} and isinstance(plug.stats, EpochMeans)
