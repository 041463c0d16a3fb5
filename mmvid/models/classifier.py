"""Encoders -> optional calibration -> fusion -> head, returning a ModelOutput.

The forward is split into stages (``encode``, ``fuse``, ``classify``) so that augmentations can mix
at the input, feature or fused stage through a :class:`mmvid.augment.base.Mix` argument; nothing is
stored on ``self`` during forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.models.encoders import ModalityEncoder
from mmvid.models.fusions import ConcatFusion, DecisionFusion, SumFusion
from mmvid.models.init import initialise
from mmvid.registry import FUSIONS


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, C)
    features: dict[str, torch.Tensor]  # per modality (B, d_m), after calibration and any feature mixing
    fused: torch.Tensor  # (B, output_dim), after any fused-stage mixing
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. calibration gates
    tokens: dict[str, torch.Tensor] | None = None  # per modality (B, N_m, d_m) when asked for (MS-Mix)
    mix: Any = None  # the Mix applied in this forward (balancers derive per-modality targets from it)


class MultimodalClassifier(nn.Module):
    def __init__(self, modalities: list[str], num_classes: int, encoder: str = "resnet18", width: int = 32,
                 fusion: str = "concat", calibrate: bool = False, fusion_args: dict | None = None,
                 unimodal: str = "mask", init: str = "ogm-ge", aux_loss: dict[str, float] | None = None) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.num_classes = num_classes
        self.encoders = nn.ModuleDict({m: ModalityEncoder(m, encoder, width) for m in self.modalities})
        dims = {m: self.encoders[m].output_dim for m in self.modalities}
        self.calibration: nn.Module | None = None
        if calibrate:
            from mmvid.models.calibration import PreFusionCalibration

            self.calibration = PreFusionCalibration(dims)
        self.fusion = FUSIONS.build(fusion, dims, **(fusion_args or {}))
        self.head = self.fusion.make_head(num_classes)
        if unimodal == "head" and not hasattr(self.head, "modality_logits"):
            raise MmvidError(f"augment.unimodal=head needs a fusion with one classifier per modality (decision, mmtm, or sum with form=logits); "
                             f"model.fusion={fusion} has one joint head: use augment.unimodal=mask")
        self.unimodal = unimodal  # how unimodal_logits predicts from one modality (not a parameter, not in state_dict)
        # Remix's baseline heads h_m: (B, d_m) -> (B, C), one per modality named in model.aux_loss; trained by the
        # loop's auxiliary loss (mmvid.engine.AuxiliaryLoss) on ModelOutput.features, never used for prediction.
        unknown = sorted(set(aux_loss or {}) - set(self.modalities))
        if unknown:
            raise MmvidError(f"model.aux_loss names {unknown}, not in data.modalities {self.modalities}")
        self.aux_heads = nn.ModuleDict({m: nn.Linear(dims[m], num_classes) for m in self.modalities
                                        if m in (aux_loss or {})}) if aux_loss else None
        initialise(self, init)

    def _encoded(self, inputs: dict[str, torch.Tensor], tokens: bool = False):
        """(features m -> (B, d_m) before calibration, tokens m -> (B, N_m, d_m) or None, extras); a fusion
        with ``encode`` (MMTM, whose blocks sit between encoder stages) runs the encoders itself."""
        if hasattr(self.fusion, "encode"):
            return self.fusion.encode(self.encoders, inputs, tokens)
        if not tokens:
            return {m: self.encoders[m](inputs[m]) for m in self.modalities}, None, {}
        toks = {m: self.encoders[m].tokens(inputs[m]) for m in self.modalities}
        return {m: toks[m].mean(1) for m in self.modalities}, toks, {}

    def encode(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-modality features (B, d_m), calibrated when the module is on."""
        feats = self._encoded(inputs)[0]
        if self.calibration is not None:
            feats, _ = self.calibration(feats)
        return feats

    def classify(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.fusion(feats))

    def forward(self, inputs: dict[str, torch.Tensor], mix=None, tokens: bool = False) -> ModelOutput:
        """inputs: modality -> batch tensor (shapes in ``encoders``); ``mix``: optional Mix to apply;
        ``tokens``: also return each encoder's token sequence (B, N_m, d_m), whose mean is the feature."""
        if mix is not None and mix.stage == "input":
            inputs = mix.apply(inputs)
        feats, toks, extras = self._encoded(inputs, tokens)
        if self.calibration is not None:
            feats, gates = self.calibration(feats)
            extras = {**extras, **gates}
        if mix is not None and mix.stage == "feature":
            feats = mix.apply(feats)
        fused = self.fusion(feats)
        if mix is not None and mix.stage == "fused":
            fused = mix.apply({"fused": fused})["fused"]
        return ModelOutput(self.head(fused), feats, fused, extras, toks, mix)

    def unimodal_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """m -> (B, C). Paper Eq. 5 (``unimodal="mask"``): modality m alone = the fused model with every other
        feature set to zero. ``unimodal="head"`` (decision fusion): modality m's own classifier W_m z_m + b_m."""
        if self.unimodal == "head":
            return self.head.modality_logits(self.fusion(feats))
        out = {}
        for m in self.modalities:
            masked = {k: (v if k == m else torch.zeros_like(v)) for k, v in feats.items()}
            out[m] = self.classify(masked)
        return out


    def split_head_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """OGM-GE's unimodal logits (its main.py), an alternative to Eq. 5's masking: each modality's own
        part of the head, m -> (B, C). Per-modality heads (sum with form=logits, decision): W_m z_m + b_m;
        one linear head on [z_a; z_v; ...] (concat) or on sum_m z_m (sum, form=feature): W_m z_m + b / M
        (W_m = W's columns of modality m for concat, all of W for sum), the bias shared out over the M
        modalities as the reference halves it for two."""
        kind = type(self.fusion)
        if kind in (SumFusion, DecisionFusion) and hasattr(self.head, "modality_logits"):
            return self.head.modality_logits(self.fusion(feats))
        if kind not in (ConcatFusion, SumFusion):
            raise MmvidError(f"split-head unimodal scores need fusion concat, sum or decision, not {kind.__name__}; "
                             f"use balance.args.score=mask (paper Eq. 5)")
        w, b, n = self.head.weight, self.head.bias, len(self.modalities)
        cols = dict(zip(self.modalities, torch.split(w, [self.fusion.dims[m] for m in self.modalities], dim=1))) \
            if kind is ConcatFusion else {m: w for m in self.modalities}
        return {m: feats[m] @ cols[m].T + b / n for m in self.modalities}


def build_model(cfg, num_classes: int) -> MultimodalClassifier:
    return MultimodalClassifier(cfg.data.modalities, num_classes, cfg.model.encoder, cfg.model.width,
                                cfg.model.fusion, cfg.model.calibrate, cfg.model.fusion_args, cfg.augment.unimodal,
                                cfg.model.init, cfg.model.aux_loss)
