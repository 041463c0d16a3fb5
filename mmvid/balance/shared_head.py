"""The shared-head fusion ``shared`` (registered by this module): one classifier for every modality, the model
of MLA (Zhang et al., CVPR 2024; :mod:`mmvid.balance.mla`) and of ReconBoost (Hua et al., ICML 2024;
``combine: boost``, :mod:`mmvid.balance.reconboost`), which both train it modality by modality."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.models.fusions import Fusion, check_equal_dims
from mmvid.registry import FUSIONS
from mmvid.schema import spec

COMBINES = ("entropy", "fixed", "boost")
ENTROPIES = ("batch", "sample")


def entropy_weights(logits: dict[str, torch.Tensor], over: str = "batch") -> dict[str, torch.Tensor]:
    """MLA's test-time fusion weights (Zhang et al. 2024, Sec. 3.3): with e_m the entropy of modality m's
    prediction, lambda_m = exp(max_k e_k - e_m) / sum_j exp(max_k e_k - e_j), so the more certain modality
    weighs more. ``over``:

    - ``batch`` (the authors' ``calculate_entropy``): p = softmax of the whole (B, C) logits over the
      *batch* dimension, e_m = -sum_{i,c} p log p, one scalar weight per modality and batch (so a clip's
      prediction depends on the batch it is evaluated in);
    - ``sample`` (the paper, and BalanceBenchmark's ``BaseClassifierMLAModel``): softmax over classes,
      e_m = -sum_c p log p per clip, weights (B, 1).

    log p is log_softmax (the authors' log(softmax) gives NaN where a probability underflows to 0)."""
    dim = 0 if over == "batch" else 1
    ent = {}
    for m, v in logits.items():
        logp = torch.log_softmax(v.float(), dim=dim)
        e = -(logp.exp() * logp)
        ent[m] = e.sum() if over == "batch" else e.sum(1, keepdim=True)
    top = torch.stack(list(ent.values())).amax(0)
    raw = {m: torch.exp(top - e) for m, e in ent.items()}
    total = sum(raw.values())
    return {m: w / total for m, w in raw.items()}


class SharedHead(nn.Module):
    """One classifier shared by every modality, f(z_m) = W z_m + b (C, d) (or, with ``hidden`` > 0, the
    ReconBoost authors' ``Head``: W2 relu(W1 z_m + b1) + b2), on the slices of h = [z_a; z_v; ...];
    logits = sum_m lambda_m f(z_m) with lambda_m from :func:`entropy_weights` (``combine: entropy``),
    fixed ``weights`` (``combine: fixed``; the authors' ``av_alpha`` 0.5 without ``--dynamic``), or
    ``combine: boost``: beta sum_m f(z_m) with beta a trained scalar starting at ``boost_rate``
    (ReconBoost's ensemble, the authors' ``DynamicNet.forward_grad``)."""

    def __init__(self, dims: dict[str, int], num_classes: int, combine: str, entropy: str,
                 weights: dict[str, float], boost_rate: float = 1.0, hidden: int = 0) -> None:
        super().__init__()
        self.dims = dict(dims)
        d = next(iter(dims.values()))
        self.hidden = nn.Sequential(nn.Linear(d, hidden), nn.ReLU()) if hidden else None
        self.linear = nn.Linear(hidden or d, num_classes)
        self.combine, self.entropy, self.weights = combine, entropy, dict(weights)
        if combine == "boost":  # only then a parameter: the other combines keep their state_dict
            self.boost_rate = nn.Parameter(torch.tensor(float(boost_rate)))

    def classifier(self, z: torch.Tensor) -> torch.Tensor:
        """f(z): (B, d) -> (B, C), the shared head on one modality's feature."""
        return self.linear(z if self.hidden is None else self.hidden(z))

    def modality_logits(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """m -> (B, C): the shared head on modality m's slice of h."""
        return {m: self.classifier(z) for m, z in zip(self.dims, torch.split(h, list(self.dims.values()), dim=1))}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.modality_logits(h)
        if self.combine == "boost":
            return self.boost_rate * sum(logits.values())
        w = entropy_weights(logits, self.entropy) if self.combine == "entropy" else self.weights
        return sum(w[m] * v for m, v in logits.items())


@FUSIONS.register("shared", doc="MLA's shared head: W z_m + b per modality, fused by entropy (or fixed) weights.")
class SharedFusion(Fusion):
    """The model of MLA (Zhang et al., CVPR 2024; the authors' ``--gs_flag``, BalanceBenchmark's
    ``fusion: shared``): one classifier shared by every modality (needs equal d_m); h = [z_a; z_v; ...]
    (B, M d) and the head (:class:`SharedHead`) combines the M unimodal predictions. ``fusion_args``:
    ``combine`` (entropy | fixed | boost), ``entropy`` (batch: the authors' code | sample: the paper and
    BalanceBenchmark), ``weights`` (modality -> weight for ``combine: fixed``; default 1/M),
    ``boost_rate`` (beta's start for ``combine: boost``) and ``hidden`` (> 0: a two-layer head, only
    with ``combine: boost``, whose balancer reads the head through ``classifier``)."""

    @dataclass
    class Settings:
        combine: str = spec("entropy", choices=COMBINES,
                            help="unimodal predictions combined by entropy weights, fixed weights or ReconBoost's boost",
                            ref="MLA main.py --gs_flag (entropy); ReconBoost dynamic_net.py DynamicNet (boost)")
        entropy: str = spec("batch", choices=ENTROPIES,
                            help="entropy over the batch (the authors' code) or per sample (the paper)",
                            ref="MLA calculate_entropy (batch); BalanceBenchmark and the paper (sample)")
        weights: dict[str, float] | None = spec(None, help="modality -> weight for combine: fixed (none: 1/M each)",
                                                ref="MLA av_alpha 0.5 without --dynamic")
        boost_rate: float = spec(1.0, ge=-1000.0, le=1000.0, help="beta's start for combine: boost",
                                 ref="ReconBoost dynamic_net.py DynamicNet.forward_grad")
        hidden: int = spec(0, ge=0, le=65536, help="> 0: a two-layer head of this width (combine: boost only)",
                           ref="ReconBoost authors' Head")

    def __init__(self, dims: dict[str, int], combine: str = "entropy", entropy: str = "batch",
                 weights: dict | None = None, boost_rate: float = 1.0, hidden: int = 0) -> None:
        super().__init__(dims)
        check_equal_dims("shared", dims)
        for key, value, allowed in (("combine", combine, COMBINES), ("entropy", entropy, ENTROPIES)):
            if value not in allowed:
                raise MmvidError(f"model.fusion_args.{key}={value!r} is not one of {list(allowed)}")
        try:
            weights = {m: float(w) for m, w in (weights or {m: 1 / len(dims) for m in dims}).items()}
        except (TypeError, ValueError):
            raise MmvidError(f"model.fusion_args.weights={weights!r} must map each modality to a number, "
                             f"e.g. {{audio: 0.5, video: 0.5}}") from None
        if set(weights) != set(dims):
            raise MmvidError(f"model.fusion_args.weights names {sorted(weights)}; give one weight per modality {list(dims)}")
        if int(hidden) < 0 or (int(hidden) and combine != "boost"):
            raise MmvidError(f"model.fusion_args.hidden={hidden} needs combine: boost and a size >= 0 (MLA reads "
                             f"the one-layer head); set hidden: 0 or combine: boost")
        self.combine, self.entropy, self.weights = combine, entropy, weights
        self.boost_rate, self.hidden = float(boost_rate), int(hidden)
        self.output_dim = sum(dims.values())

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([feats[m] for m in self.modalities], dim=1)

    def make_head(self, num_classes: int) -> nn.Module:
        return SharedHead(self.dims, num_classes, self.combine, self.entropy, self.weights, self.boost_rate, self.hidden)
