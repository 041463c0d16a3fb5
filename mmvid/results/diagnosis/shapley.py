"""Exact Shapley values of the modalities over their coalitions (the one place diagnose computes them).

A coalition S of modalities is the fused model with the features of every modality outside S set to zero (paper
Eq. 5's masking), its value v_i(S) for sample i. With M modalities there are 2^M coalitions, so the exact value
is cheap:

    phi_m = sum_{S subset of M minus m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)),

per sample. Efficiency: sum_m phi_m = v(M) - v(empty). :func:`balancebenchmark_shapley` is BalanceBenchmark's
unweighted figure, kept beside it so that a figure can be compared with theirs.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def coalitions(modalities: list[str]) -> list[frozenset[str]]:
    """Every subset of the modalities, the empty one first (2^M of them)."""
    return [frozenset(c) for k in range(len(modalities) + 1) for c in itertools.combinations(modalities, k)]


def shapley(values: dict[frozenset[str], np.ndarray], modalities: list[str]) -> dict[str, np.ndarray]:
    """Exact Shapley values per sample: ``values`` maps each coalition to v(S) of shape (N,); returns
    m -> phi_m (N,) with the weights |S|! (M - |S| - 1)! / M!."""
    n = len(modalities)
    out = {}
    for m in modalities:
        phi = np.zeros_like(values[frozenset()], dtype=np.float64)
        for s in values:
            if m in s:
                continue
            w = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            phi = phi + w * (values[s | {m}] - values[s])
        out[m] = phi
    return out


def balancebenchmark_shapley(acc: dict[frozenset[str], float], modalities: list[str]) -> dict[str, float]:
    """BalanceBenchmark's "Shapley" imbalance figure (``Calculate_Shapley`` in balancemm/evaluation/modalitys.py,
    default ``include_empty=False``): for each m, the unweighted sum of acc(S + m) - acc(S) over the non-empty
    coalitions S without m (for two modalities: acc(all) - acc(the other alone)). Not the weighted Shapley
    value (:func:`shapley`); kept so a figure can be compared with theirs."""
    return {m: float(sum(acc[s | {m}] - acc[s] for s in acc if s and m not in s)) for m in modalities}
