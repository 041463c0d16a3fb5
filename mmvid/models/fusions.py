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
    """Interface: ``forward(feats) -> (B, output_dim)``; ``make_head(num_classes) -> nn.Module``."""

    output_dim: int

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)

    def make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.output_dim, num_classes)


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

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([feats[m] for m in self.modalities], dim=1)

    def make_head(self, num_classes: int) -> nn.Module:
        return StarHead(self.output_dim, num_classes) if self.star else super().make_head(num_classes)


def _check_equal_dims(name: str, dims: dict[str, int]) -> None:
    if len(set(dims.values())) != 1:
        raise MmvidError(f"fusion {name!r} needs equal feature sizes, got {dims}; use the same model.encoder for every "
                         f"modality or choose --fusion concat")


def _check_two_plus(name: str, dims: dict[str, int]) -> None:
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

    @dataclass
    class Settings:
        form: str = spec("logits", choices=("logits", "feature"),
                         help="sum of per-modality logits fc_m(z_m) (logits) or one head on sum_m z_m (feature)",
                         ref="OGM-GE models/fusion_modules.py SumFusion (logits)")

    def __init__(self, dims: dict[str, int], form: str = "logits") -> None:
        super().__init__(dims)
        _check_equal_dims("sum", dims)
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
        _check_two_plus("film", dims)
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
        _check_two_plus("bigated", dims)
        self.output_dim = sum(dims.values())
        self.gates = nn.ModuleDict({m: nn.Linear(sum(d for k, d in dims.items() if k != m), dims[m]) for m in dims})

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        out = []
        for m in self.modalities:
            others = torch.cat([feats[k] for k in self.modalities if k != m], dim=1)
            out.append(torch.sigmoid(self.gates[m](others)) * feats[m])
        return torch.cat(out, dim=1)


class MMTMBlock(nn.Module):
    """One multimodal transfer module between encoder stages, as the balanced MMTM of Wu et al. (2022)
    (reference: nyukat/greedy_multimodal_learning, ``src/balanced_mmtm.py``, ``MMTM_mitigate``):

        s_m = mean over (T, H, W) of modality m's maps (B, C_m);  u = ReLU(W_s [s_a; s_v; ...] + b_s)
        e_m = sigmoid(W_m u + b_m) (B, C_m);  out_m = e_m * maps_m (broadcast over T, H, W)

    with W_s: sum C_m -> int(2 sum C_m / ratio). In a re-balancing step (``care`` = m) modality m's
    excitation is replaced by its running average *including this batch*, ē_m' = (mean_B e_m + n ē_m) / (n + 1),
    as the reference updates the average before using it; forward leaves the buffers alone: the greedy
    balancer commits the same update with :meth:`update` after the step.
    """

    def __init__(self, channels: dict[str, int], ratio: float = 4) -> None:
        super().__init__()
        self.channels = dict(channels)
        dim = sum(channels.values())
        hidden = int(2 * dim / ratio)
        self.squeeze = nn.Linear(dim, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"running_{m}", torch.zeros(c))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # Modality whose excitation feeds m's running average: m itself, or the first modality for all
        # (``average_source = "first"``, what the reference code does; set by the greedy balancer).
        self.average_source = "own"

    def source(self, m: str) -> str:
        return next(iter(self.channels)) if self.average_source == "first" else m

    def excitations(self, squeezed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """m -> e_m (B, C_m) in (0, 1) from the squeezed (B, C_m) maps of every modality."""
        u = torch.relu(self.squeeze(torch.cat([squeezed[m] for m in self.channels], dim=1)))
        return {m: torch.sigmoid(self.excite[m](u)) for m in self.channels}

    def averaged(self, e: dict[str, torch.Tensor], m: str) -> torch.Tensor:
        """(C_m,) running average of m's excitation with this batch's mean counted in (no gradient)."""
        n = self.count.to(e[m].dtype)
        return ((e[self.source(m)].detach().mean(0) + getattr(self, f"running_{m}") * n) / (n + 1)).to(e[m].dtype)

    def forward(self, maps: dict[str, torch.Tensor], frames: dict[str, int], care: str | None = None):
        """maps: m -> (B * T_m, C_m, H, W); returns (rescaled maps, m -> e_m (B, C_m) before any replacement)."""
        squeezed = {m: x.mean((2, 3)).view(-1, frames[m], x.shape[1]).mean(1) for m, x in maps.items()}
        e = self.excitations(squeezed)
        out = {}
        for m, x in maps.items():
            scale = self.averaged(e, m).expand_as(e[m]) if m == care else e[m]
            out[m] = x * scale.repeat_interleave(frames[m], 0)[:, :, None, None]
        return out, e

    @torch.no_grad()
    def update(self, batch_means: dict[str, torch.Tensor]) -> None:
        """Running averages ē_m <- (mean_B e_m + n ē_m) / (n + 1), n <- n + 1 (the reference's cumulative mean)."""
        n = self.count.float()
        for m in self.channels:
            buf = getattr(self, f"running_{m}")
            buf.copy_((batch_means[self.source(m)].to(buf) + buf * n) / (n + 1))
        self.count += 1


@FUSIONS.register("mmtm", doc="MMTM blocks between encoder stages 2-4, then per-modality heads (needed by greedy).")
class MMTMFusion(DecisionFusion):
    """Multimodal transfer modules (Joze et al. 2020) between encoder stages, as the balanced MMTM
    network of Wu et al. (2022) (reference: ``src/model.py``, ``MMTM_MVCNN``): one :class:`MMTMBlock`
    after each stage in ``positions`` (1-based, default 2, 3, 4 = after ResNet-18's layer2, layer3 and
    layer4; the small encoder's stages likewise), then, as the reference, one linear head per
    modality whose logits are averaged (h = [z_a; z_v] (B, sum d_m), see :class:`DecisionFusion`).

    The classifier runs the encoders through :meth:`encode`; ``care`` (set by the greedy balancer
    before a re-balancing step) names the modality whose excitations are replaced by their running
    averages in every block; it has no effect in eval mode.
    """

    @dataclass
    class Settings:
        positions: list[int] = spec(factory=lambda: [2, 3, 4], choices=tuple(range(1, NUM_STAGES + 1)),
                                    help="encoder stages (1-based) followed by an MMTM block",
                                    ref="greedy_multimodal_learning src/model.py MMTM_MVCNN (after layers 2-4)")
        ratio: float = spec(4.0, gt=0.0, le=1024.0, help="squeeze width int(2 sum C_m / ratio)",
                            ref="greedy_multimodal_learning src/balanced_mmtm.py (MMTM_mitigate)")

    def __init__(self, dims: dict[str, int], positions: list[int] | tuple[int, ...] = (2, 3, 4), ratio: float = 4) -> None:
        super().__init__(dims)
        _check_two_plus("mmtm", dims)
        self.positions = sorted(int(p) for p in positions)
        if not self.positions or not all(1 <= p <= NUM_STAGES for p in self.positions):
            raise MmvidError(f"model.fusion_args.positions={list(positions)} must name encoder stages 1..{NUM_STAGES}")
        chans = {m: stage_channels(d) for m, d in dims.items()}
        self.blocks = nn.ModuleDict({str(p): MMTMBlock({m: c[p - 1] for m, c in chans.items()}, ratio)
                                     for p in self.positions})
        self.care: str | None = None

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor], tokens: bool = False):
        """Run every encoder stage by stage with the MMTM blocks in between: (features m -> (B, d_m),
        tokens m -> (B, N_m, d_m) when asked for (else None), extras ``mmtm{p}_{m}`` -> excitation e_m
        (B, C_m) of block p before any replacement)."""
        care = self.care if self.training else None
        maps, frames = {}, {}
        for m in self.modalities:
            maps[m], frames[m] = encoders[m].frames(inputs[m])
        extras = {}
        for i in range(NUM_STAGES):
            maps = {m: encoders[m].run_stage(i, x) for m, x in maps.items()}
            block = self.blocks[str(i + 1)] if str(i + 1) in self.blocks else None
            if block is not None:
                maps, e = block(maps, frames, care)
                extras.update({f"mmtm{i + 1}_{m}": v for m, v in e.items()})
        if tokens:
            toks = {m: encoders[m].map_tokens(x, frames[m], inputs[m].dim() == 5) for m, x in maps.items()}
            return {m: v.mean(1) for m, v in toks.items()}, toks, extras
        return {m: encoders[m].pool(x, frames[m]) for m, x in maps.items()}, None, extras


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
        _check_equal_dims("shared", dims)
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
