"""Exact Shapley values of the modalities over their coalitions (diagnose's use of :mod:`mmvid.measures`).

A coalition S of modalities is the fused model with the features of every modality outside S set to zero (paper
Eq. 5's masking), its value v_i(S) for sample i. With M modalities there are 2^M coalitions, so the exact value
is cheap:

    phi_m = sum_{S subset of M minus m} |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)),

per sample. Efficiency: sum_m phi_m = v(M) - v(empty). :func:`balancebenchmark_shapley` is BalanceBenchmark's
unweighted figure, kept beside it so that a figure can be compared with theirs.
"""

from __future__ import annotations

import numpy as np

from mmvid import measures


def coalitions(modalities: list[str]) -> list[frozenset[str]]:
    """Every subset of the modalities, the empty one first (2^M of them), as the keys of a values mapping."""
    return [frozenset(c) for c in measures.coalitions(modalities, empty=True)]


def shapley(values: dict[frozenset[str], np.ndarray], modalities: list[str]) -> dict[str, np.ndarray]:
    """Exact Shapley values per sample: ``values`` maps each coalition to v(S) of shape (N,); returns
    m -> phi_m (N,) float64 (:func:`mmvid.measures.shapley_values`, the one implementation)."""
    return {m: np.asarray(phi, dtype=np.float64)
            for m, phi in measures.shapley_values(values, modalities).items()}


def balancebenchmark_shapley(acc: dict[frozenset[str], float], modalities: list[str]) -> dict[str, float]:
    """BalanceBenchmark's "Shapley" imbalance figure (``Calculate_Shapley`` in balancemm/evaluation/modalitys.py,
    default ``include_empty=False``): for each m, the unweighted sum of acc(S + m) - acc(S) over the non-empty
    coalitions S without m (for two modalities: acc(all) - acc(the other alone)). Not the weighted Shapley
    value (:func:`shapley`); kept so a figure can be compared with theirs."""
    return {m: float(sum(acc[s | {m}] - acc[s] for s in acc if s and m not in s)) for m in modalities}
