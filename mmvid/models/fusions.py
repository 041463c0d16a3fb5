"""Fusion strategies (paper Table 1). Every fusion takes ``dict[str, Tensor]`` of (B, d_m) features
in a fixed modality order and returns the fused feature h (B, output_dim); ``make_head`` gives the
classifier on h (a Linear, except decision fusion whose head is one Linear per modality).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.errors import MmvidError
from mmvid.models.encoders import NUM_STAGES, stage_channels
from mmvid.registry import FUSIONS
from mmvid.schema import spec


class Fusion(nn.Module):
    """Interface: ``forward(feats) -> (B, output_dim)``; ``make_head(num_classes) -> nn.Module``.

    ``split_head`` (a class attribute, the one place that says it): whether the head splits into one part per
    modality, read by the classifier's :meth:`~mmvid.models.classifier.MultimodalClassifier.split_head_logits`
    and by the balancers' checks of a config; a fusion that says True implements :meth:`split_logits`.
    A fusion that runs the encoders itself (its blocks sit between encoder stages) defines
    ``encode(encoders, inputs, tokens) -> (features, tokens or None, extras)``, which the classifier then calls.
    """

    output_dim: int
    split_head: bool = False

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)

    def make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.output_dim, num_classes)

    def split_logits(self, head: nn.Module, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's own part of ``head`` (the module :meth:`make_head` built) on its features
        (m -> (B, d_m)): m -> (B, C). Only for a fusion whose ``split_head`` is True."""
        raise NotImplementedError(f"{type(self).__name__} has no split head")


def split_head_fusions() -> str:
    """The registered fusions whose ``split_head`` is True, for a message: "concat, decision or sum"."""
    names = [n for n in FUSIONS.names() if getattr(FUSIONS.get(n), "split_head", False)]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def linear_split_logits(head: nn.Module, feats: dict[str, torch.Tensor], columns: bool) -> dict[str, torch.Tensor]:
    """One linear head W (C, D), b split over the modalities (OGM-GE's main.py, for two): W_m z_m + b / M, W_m the
    columns facing modality m (``columns``: the head reads [z_a; z_v; ...]) or all of W (the head reads a sum of
    the z_m), the bias shared out over the M modalities as the reference halves it for two."""
    w, b, n = head.weight, head.bias, len(feats)
    cols = dict(zip(feats, torch.split(w, [z.shape[1] for z in feats.values()], dim=1))) if columns \
        else {m: w for m in feats}
    return {m: z @ cols[m].T + b / n for m, z in feats.items()}


class StarHead(nn.Linear):
    """Concat head followed by a (C, C) linear layer: logits = W* (W h + b) + b* (B, C), BalanceBenchmark's
    ``BaseClassifierAMCoModel.linear_star``. ``weight`` and ``bias`` stay the first layer's, so the split-head
    unimodal logits W_m z_m + b / M are those before W*, as in that reference."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes)
        self.star = nn.Linear(num_classes, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.star(super().forward(h))


@FUSIONS.register("concat", doc="Concat: h = [z_a; z_v; ...], logits = W h + b (Table 1, Concat); star: one more (C, C) layer.")
class ConcatFusion(Fusion):
    """h = [z_a; z_v; ...] (B, sum d_m); logits = W h + b (paper Table 1, Concat). ``fusion_args.star``
    (false): one more (C, C) linear layer on the logits (:class:`StarHead`, AMCo's BalanceBenchmark model)."""

    @dataclass
    class Settings:
        star: bool = spec(False, help="one more (C, C) linear layer on the logits (AMCo's model)",
                          ref="BalanceBenchmark BaseClassifierAMCoModel.linear_star")

    def __init__(self, dims: dict[str, int], star: bool = False) -> None:
        super().__init__(dims)
        self.output_dim = sum(dims.values())
        self.star = bool(star)
        if self.star and type(self) is not ConcatFusion:
            raise MmvidError(f"model.fusion_args.star needs --fusion concat (its one linear head); "
                             f"remove star for this fusion")

    split_head = True  # W's columns facing each modality

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([feats[m] for m in self.modalities], dim=1)

    def make_head(self, num_classes: int) -> nn.Module:
        return StarHead(self.output_dim, num_classes) if self.star else super().make_head(num_classes)

    def split_logits(self, head: nn.Module, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_m z_m + b / M with W_m the head's columns facing modality m (:func:`linear_split_logits`)."""
        return linear_split_logits(head, {m: feats[m] for m in self.modalities}, columns=True)


def check_equal_dims(name: str, dims: dict[str, int]) -> None:
    if len(set(dims.values())) != 1:
        raise MmvidError(f"fusion {name!r} needs equal feature sizes, got {dims}; use the same model.encoder for every "
                         f"modality or choose --fusion concat")


def check_two_plus(name: str, dims: dict[str, int]) -> None:
    if len(dims) < 2:
        raise MmvidError(f"fusion {name!r} needs at least two modalities (data.modalities has {list(dims)}); "
                         f"use --fusion concat for one modality")


@FUSIONS.register("sum", doc="Sum: fc_a(z_a) + fc_v(z_v) (form=logits, OGM-GE's SumFusion) or head(z_a + z_v) (form=feature).")
class SumFusion(Fusion):
    """Sum fusion (paper Table 1, Sum); needs equal d_m. ``fusion_args.form``:

    - ``logits`` (default; OGM-GE's ``SumFusion``, the code the paper builds on): one linear layer per
      modality, logits = sum_m (W_m z_m + b_m). The fused feature h is the concatenation [z_a; z_v; ...]
      (B, sum d_m), as for decision fusion; the head is linear in h, so mixing h (MM, Eq. 3) mixes
      every z_m and the logits with the same lambda and pi.
    - ``feature``: h = sum_m z_m (B, d), element-wise, and logits = W h + b.
    """

    FORMS = ("logits", "feature")
    split_head = True  # one head per modality (logits), or all of W for each (feature)

    @dataclass
    class Settings:
        form: str = spec("logits", choices=("logits", "feature"),
                         help="sum of per-modality logits fc_m(z_m) (logits) or one head on sum_m z_m (feature)",
                         ref="OGM-GE models/fusion_modules.py SumFusion (logits)")

    def __init__(self, dims: dict[str, int], form: str = "logits") -> None:
        super().__init__(dims)
        check_equal_dims("sum", dims)
        if form not in self.FORMS:
            raise MmvidError(f"model.fusion_args.form={form!r} is not one of {list(self.FORMS)}; "
                             f"use logits (fc_a(z_a) + fc_v(z_v), OGM-GE) or feature (head(z_a + z_v))")
        self.form = form
        self.output_dim = sum(dims.values()) if form == "logits" else next(iter(dims.values()))

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.form == "logits":
            return torch.cat([feats[m] for m in self.modalities], dim=1)
        return torch.stack([feats[m] for m in self.modalities]).sum(0)

    def make_head(self, num_classes: int) -> nn.Module:
        if self.form == "logits":
            return SumOfModalityHeads(self.dims, num_classes)
        return super().make_head(num_classes)

    def split_logits(self, head: nn.Module, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """form=logits: each modality's own head W_m z_m + b_m; form=feature: W z_m + b / M."""
        if hasattr(head, "modality_logits"):
            return head.modality_logits(self(feats))
        return linear_split_logits(head, {m: feats[m] for m in self.modalities}, columns=False)


class MeanOfModalityHeads(nn.Module):
    """Decision-fusion head: logits = (1/M) sum_m W_m h[slice_m] + b_m over the slices of h = [z_a; z_v; ...]."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})

    def split(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.dims, torch.split(h, list(self.dims.values()), dim=1)))

    def modality_logits(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each modality's own classifier on its slice: m -> (B, C)."""
        return {m: self.heads[m](z) for m, z in self.split(h).items()}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.modality_logits(h).values())).mean(0)


class SumOfModalityHeads(MeanOfModalityHeads):
    """Head of the logit-sum fusion: logits = sum_m W_m h[slice_m] + b_m (OGM-GE's fc_x(x) + fc_y(y))."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.modality_logits(h).values())).sum(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight" in state_dict:  # saved before form=logits became sum's default
            raise MmvidError("this checkpoint's sum fusion is form=feature (one head on z_a + z_v) but its config does "
                             "not say so; add form: feature under model.fusion_args in the checkpoint's config, or retrain")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


@FUSIONS.register("decision", doc="Late fusion: mean of one linear head per modality (Table 1, Decision).")
class DecisionFusion(ConcatFusion):
    """Late fusion (paper Table 1, Decision): h = [z_a; z_v; ...] (B, sum d_m) and the head averages
    one linear classifier per modality, logits = (1/M) sum_m (W_m z_m + b_m). MM mixes h, i.e. every
    z_m with the same lambda and pi."""

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__(dims)  # no settings (concat's ``star`` is concat's own)

    def make_head(self, num_classes: int) -> nn.Module:
        return MeanOfModalityHeads(self.dims, num_classes)

    def split_logits(self, head: nn.Module, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each modality's own classifier W_m z_m + b_m."""
        return head.modality_logits(self(feats))


class CosineHead(nn.Module):
    """MMCosine head on h = [z_a; z_v; ...] (B, sum d_m): logits = s sum_m (z_m / |z_m|) (W_m / |W_m|)^T (B, C),
    W (C, sum d_m) one weight matrix as the reference's ``fc_out`` (no bias: MMCosine never uses it), W_m its
    columns facing modality m, each class row normalised within W_m. A zero feature (Eq. 5 masking) adds 0."""

    def __init__(self, dims: dict[str, int], num_classes: int, scale: float) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.scale = scale
        self.weight = nn.Parameter(torch.empty(num_classes, sum(dims.values())))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Linear's initialisation, as the reference's fc_out

    def modality_logits(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """m -> s cos(z_m, W_m) (B, C): the reference's out_a, out_v."""
        sizes = list(self.dims.values())
        return {m: self.scale * F.normalize(z, dim=1) @ F.normalize(w, dim=1).T
                for m, z, w in zip(self.dims, torch.split(h, sizes, dim=1), torch.split(self.weight, sizes, dim=1))}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.modality_logits(h).values())).sum(0)


@FUSIONS.register("mmcosine", doc="MMCosine: logits = s sum_m cos(z_m, W_m), per-modality normalised features and class weights.")
class MMCosineFusion(ConcatFusion):
    """MMCosine (Xu, Feng, Zhang, Hu, ICASSP 2023, Eqs. 3-4; reference GeWu-Lab/MMCosine_ICASSP23 ``main_CD.py``
    ``--mmcosine True``, and BalanceBenchmark ``balancemm/trainer/MMCosine_trainer.py``): h = [z_a; z_v; ...]
    (B, sum d_m) and the head (:class:`CosineHead`) sums the scaled cosine similarities of each modality's
    L2-normalised feature with its L2-normalised class weights, logits_c = s sum_m cos(z_m, W_m,c).
    ``fusion_args.scale`` s: 10 (the reference's ``--scaling`` default and README; BalanceBenchmark 15).
    A fusion, not a balancer: the head is part of the model, so evaluation and checkpoints use it too."""

    split_head = False  # its cosine head does not split into linear parts

    @dataclass
    class Settings:
        scale: float = spec(10.0, gt=0.0, le=10000.0, help="s, the scale of the summed cosine logits",
                            ref="MMCosine main_CD.py --scaling (10); BalanceBenchmark 15")

    def __init__(self, dims: dict[str, int], scale: float = 10.0) -> None:
        super().__init__(dims)
        self.scale = float(scale)
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise MmvidError(f"model.fusion_args.scale={scale!r} must be a positive number; the reference uses 10")

    def make_head(self, num_classes: int) -> nn.Module:
        return CosineHead(self.dims, num_classes, self.scale)


@FUSIONS.register("film", doc="FiLM: h = gamma(z_c) * z_other + beta(z_c); c = fusion_args.condition (audio).")
class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018): gamma, beta = Linear(z_c) from the conditioning modality c
    (``fusion_args.condition``, default audio as in OGM-GE, else the first modality);
    h = gamma * [z_k]_{k != c} + beta (B, sum_{k != c} d_k). With N > 2 the other modalities are
    concatenated and modulated together."""

    @dataclass
    class Settings:
        condition: str | None = spec(None, choices=("audio", "video", "flow"),
                                     help="the conditioning modality (none: audio if present, else the first)",
                                     ref="OGM-GE models/fusion_modules.py FiLM (audio conditions)")

    def __init__(self, dims: dict[str, int], condition: str | None = None) -> None:
        super().__init__(dims)
        check_two_plus("film", dims)
        self.condition = condition or ("audio" if "audio" in dims else self.modalities[0])
        if self.condition not in dims:
            raise MmvidError(f"model.fusion_args.condition={self.condition!r} is not one of the modalities {list(dims)}")
        self.targets = [m for m in self.modalities if m != self.condition]
        self.output_dim = sum(dims[m] for m in self.targets)
        self.film = nn.Linear(dims[self.condition], 2 * self.output_dim)

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        gamma, beta = self.film(feats[self.condition]).chunk(2, dim=1)
        return gamma * torch.cat([feats[m] for m in self.targets], dim=1) + beta


@FUSIONS.register("bigated", doc="Bidirectional gating: h = [sigma(W_a z_v) * z_a ; sigma(W_v z_a) * z_v].")
class BiGatedFusion(Fusion):
    """Bidirectional gating (Kiela et al. 2018): h = [sigma(W_a z_v) * z_a ; sigma(W_v z_a) * z_v]
    (B, sum d_m); with N > 2 modality m is gated by the concatenation of the others."""

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__(dims)
        check_two_plus("bigated", dims)
        self.output_dim = sum(dims.values())
        self.gates = nn.ModuleDict({m: nn.Linear(sum(d for k, d in dims.items() if k != m), dims[m]) for m in dims})

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        out = []
        for m in self.modalities:
            others = torch.cat([feats[k] for k in self.modalities if k != m], dim=1)
            out.append(torch.sigmoid(self.gates[m](others)) * feats[m])
        return torch.cat(out, dim=1)
