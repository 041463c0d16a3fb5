"""Fusion strategies (paper Table 1). Every fusion takes ``dict[str, Tensor]`` of (B, d_m) features
in a fixed modality order and returns the fused feature h (B, output_dim); ``make_head`` gives the
classifier on h (a Linear, except decision fusion whose head is one Linear per modality).
"""

from __future__ import annotations

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.registry import FUSIONS


class Fusion(nn.Module):
    """Interface: ``forward(feats) -> (B, output_dim)``; ``make_head(num_classes) -> nn.Module``."""

    output_dim: int

    def __init__(self, dims: dict[str, int]) -> None:
        super().__init__()
        self.dims = dict(dims)
        self.modalities = list(dims)

    def make_head(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.output_dim, num_classes)


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """h = [z_a; z_v; ...] (B, sum d_m); logits = W h + b (paper Table 1, Concat)."""

    def __init__(self, dims: dict[str, int], **_) -> None:
        super().__init__(dims)
        self.output_dim = sum(dims.values())

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([feats[m] for m in self.modalities], dim=1)


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

    def __init__(self, dims: dict[str, int], form: str = "logits", **_) -> None:
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

    def make_head(self, num_classes: int) -> nn.Module:
        return MeanOfModalityHeads(self.dims, num_classes)


@FUSIONS.register("film", doc="FiLM: h = gamma(z_c) * z_other + beta(z_c); c = fusion_args.condition (audio).")
class FiLMFusion(Fusion):
    """FiLM (Perez et al. 2018): gamma, beta = Linear(z_c) from the conditioning modality c
    (``fusion_args.condition``, default audio as in OGM-GE, else the first modality);
    h = gamma * [z_k]_{k != c} + beta (B, sum_{k != c} d_k). With N > 2 the other modalities are
    concatenated and modulated together."""

    def __init__(self, dims: dict[str, int], condition: str | None = None, **_) -> None:
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

    def __init__(self, dims: dict[str, int], **_) -> None:
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


@FUSIONS.register("mmtm", doc="MMTM excitation of each feature from all, then concat (needed by greedy).")
class MMTMFusion(ConcatFusion):
    """Multimodal transfer module (Joze et al. 2020) on the pooled features, then concatenation; the
    fusion that the ``greedy`` balancer (Wu et al. 2022) steers:

        s = ReLU(W_s [z_a; z_v; ...]),  e_m = 2 sigmoid(W_m s),  h = [e_a * z_a; e_v * z_v; ...].

    The reference inserts MMTM between encoder stages; here one block sits after the last stage (a
    simplification). ``care`` (set by the greedy balancer before a re-balancing step) names a modality
    whose excitation is computed from its own feature and the *running means* of the others, cutting
    the cross-modal help it receives; ``running`` holds those means (updated by the balancer).
    """

    def __init__(self, dims: dict[str, int], squeeze: int = 64, **_) -> None:
        super().__init__(dims)
        _check_two_plus("mmtm", dims)
        self.squeeze = nn.Linear(sum(dims.values()), squeeze)
        self.excite = nn.ModuleDict({m: nn.Linear(squeeze, d) for m, d in dims.items()})
        for m, d in dims.items():
            self.register_buffer(f"running_{m}", torch.zeros(d))
        self.care: str | None = None

    def excitations(self, feats: dict[str, torch.Tensor], care: str | None = None) -> dict[str, torch.Tensor]:
        """m -> e_m (B, d_m) in (0, 2); for ``care`` the other modalities enter as their running means."""
        def squeeze(src: dict[str, torch.Tensor]) -> torch.Tensor:
            return torch.relu(self.squeeze(torch.cat([src[m] for m in self.modalities], dim=1)))

        s = squeeze(feats)
        out = {m: 2 * torch.sigmoid(self.excite[m](s)) for m in self.modalities}
        if care is not None:
            cut = {k: (v if k == care else getattr(self, f"running_{k}").expand_as(v)) for k, v in feats.items()}
            out[care] = 2 * torch.sigmoid(self.excite[care](squeeze(cut)))
        return out

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        care = self.care if self.training else None
        e = self.excitations(feats, care)
        return torch.cat([e[m] * feats[m] for m in self.modalities], dim=1)
