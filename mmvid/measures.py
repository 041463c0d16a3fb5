"""The measures that several parts of mmvid compute, each written once: exact Shapley values over modality
coalitions, the imbalance factor rho between modalities' scores, and the eval-mode switch of the passes that
measure them.

A low module: it imports torch and nothing of mmvid, so that the models, the plug-ins, the loop and the
results can all use it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import TypeVar

from torch import nn

V = TypeVar("V")  # a value of a coalition: a number, a numpy array or a torch tensor of shape (N,) or (N, C)

EPS = 1e-12  # the floor of a denominator in rho


# ----------------------------------------------------------------------------- Shapley values


def coalitions(modalities: list[str], empty: bool = False) -> list[tuple[str, ...]]:
    """Every subset S of the modalities as a tuple in ``modalities`` order, by size (the full set last);
    the empty one first when ``empty``: 2^M - 1 of them (2^M with the empty one)."""
    return [c for r in range(0 if empty else 1, len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def shapley_weight(size: int, n: int) -> float:
    """w(s) = s! (M - s - 1)! / M!: the weight of a coalition of s of the other modalities (M = n)."""
    return math.factorial(size) * math.factorial(n - size - 1) / math.factorial(n)


def shapley_values(values: Mapping[Collection[str], V], modalities: list[str],
                   include_empty: bool = True) -> dict[str, V]:
    """Exact Shapley values of the modalities: m -> phi_m, of the shape and kind of the values (a number, a
    numpy array or a torch tensor, e.g. (N,) per sample), with

        phi_m = sum_{S subset of M \\ {m}} |S|! (|M| - |S| - 1)! / |M|! (v(S + m) - v(S))

    (Shapley 1953; the modality-level form of Wei et al. 2024, Eqs. 3-4, and of AGM's Eq. 4). ``values``
    maps each coalition (any collection of modality names: a tuple, a frozenset) to v(S); v(empty) is
    ``values``'s empty coalition when it has one, else 0. ``include_empty=False`` leaves the terms with
    S = empty out of the sum (BalanceBenchmark's ``Calculate_Shapley_Sample``); the values then no longer sum
    to v(M) - v(empty). The terms are added by coalition size, each size in ``combinations`` order.
    """
    v = {frozenset(s): x for s, x in values.items()}
    zero = v.get(frozenset(), 0.0)
    n = len(modalities)
    out = {}
    for m in modalities:
        others = [k for k in modalities if k != m]
        phi = 0.0
        for s in coalitions(others, empty=include_empty):
            s = frozenset(s)
            phi = phi + shapley_weight(len(s), n) * (v[s | {m}] - (v[s] if s else zero))
        out[m] = phi
    return out


def shapley_matrix(modalities: list[str]) -> dict[str, dict[tuple[str, ...], float]]:
    """a[m][S] over the non-empty coalitions S (:func:`coalitions`) with phi_m = sum_S a[m][S] v(S) for
    v(empty) = 0: :func:`shapley_values` as a linear map, a[m][S] = w(|S| - 1) when m is in S, else -w(|S|)
    (two modalities: phi_a = 0.5 (v(a, v) - v(v) + v(a)), AGM's ``Modality_Audio``)."""
    subsets = coalitions(modalities)
    out: dict[str, dict[tuple[str, ...], float]] = {m: {} for m in modalities}
    for s in subsets:  # phi of the unit vector v = 1[S' = S] is column S of the matrix
        phi = shapley_values({t: float(t == s) for t in subsets}, modalities)
        for m in modalities:
            out[m][s] = phi[m]
    return out


# ----------------------------------------------------------------------------- imbalance factor rho


BASELINES = ("all", "others")


def modality_ratios(scores: Mapping[str, float], baseline: str = "all") -> dict[str, float]:
    """rho_m, how far modality m's score s_m (a summed true-class probability or accuracy of its unimodal
    prediction, paper Eq. 5) runs ahead of the others', for every modality of ``scores``:

        two modalities:        rho_a = s_a / s_v,   rho_v = s_v / s_a       (paper Eq. 6)
        N > 2, ``all``:        rho_m = s_m / mean_k s_k, k over all N        (METHODS.md, B-MM for N > 2)
        any N, ``others``:     rho_m = s_m / mean_{k != m} s_k                (OGM-GE, OPM and PMR for N > 2)

    Both baselines are Eq. 6 for two modalities and agree on which modalities lead (rho_m > 1) for every N:
    s_m is above the mean of all exactly when it is above the mean of the others. ``others`` is kept for the
    balancers, whose references have two modalities and whose N > 2 form mmvid has documented so since
    they were added (docs/methods.md). A denominator below 1e-12 counts as 1e-12.
    """
    if baseline not in BASELINES:
        raise ValueError(f"modality_ratios: baseline {baseline!r} is not one of {BASELINES}")
    if baseline == "all" and len(scores) > 2:
        mean = max(sum(scores.values()) / len(scores), EPS)
        return {m: s / mean for m, s in scores.items()}
    out = {}
    for m, s in scores.items():
        others = [v for k, v in scores.items() if k != m]
        out[m] = s / max(sum(others) / len(others), EPS)
    return out


def imbalance_factor(scores: Mapping[str, float]) -> float:
    """The one number rho of paper Eq. 6: s_first / s_second for two modalities (in ``scores``'s order,
    i.e. ``data.modalities``: s_audio / s_video); for N > 2 the largest over the smallest of the
    :func:`modality_ratios`, which is max_m s_m / min_m s_m. A denominator below 1e-12 counts as 1e-12."""
    mods = list(scores)
    if len(mods) == 2:
        return scores[mods[0]] / max(scores[mods[1]], EPS)
    ratios = modality_ratios(scores)
    return max(ratios.values()) / max(min(ratios.values()), EPS)


# ----------------------------------------------------------------------------- train / eval mode


@contextmanager
def training_mode(training: bool, *modules: nn.Module | None) -> Iterator[None]:
    """Put ``modules`` in train (``training=True``) or eval mode for the block, and put each back in the mode
    it was in when the block ends, also when it raises (``module.train(was)``: the whole module, submodules
    included, as ``train()`` sets them). ``None`` entries are skipped."""
    held = [(m, m.training) for m in modules if m is not None]
    for m, _ in held:
        m.train(training)
    try:
        yield
    finally:
        for m, was in held:
            m.train(was)


def eval_mode(*modules: nn.Module | None):
    """:func:`training_mode` with ``training=False``: BatchNorm on its running statistics, no dropout, for a
    measuring pass (``with eval_mode(net), torch.no_grad(): ...``)."""
    return training_mode(False, *modules)
