"""The conditional utilisation rate of a modality (Wu et al. 2022, Greedy), bounded:
u_m = (A(M) - A(M minus m)) / max(A(M), A(M minus m)) in [-1, 1]. Wu et al. divide by A(M) only, which leaves
[-1, 1] when the model does worse with m than without it (Greedy issue #1); where A(M) >= A(M minus m) the two
agree."""

from __future__ import annotations


def utilisation(acc_all: float, acc_without: float) -> float:
    """Conditional utilisation rate of a modality, bounded to [-1, 1]: (A(M) - A(M minus m)) / max of the two
    (Wu et al. 2022 divide by A(M), and equal this whenever A(M) >= A(M minus m)); 0 when both are 0."""
    top = max(acc_all, acc_without)
    return 0.0 if top <= 0 else (acc_all - acc_without) / top
