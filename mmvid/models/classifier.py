"""Encoders -> optional calibration -> fusion -> head, returning a ModelOutput.

The forward is split into stages (``encode``, ``fuse``, ``classify``) so that augmentations can mix
at the input, feature or fused stage through a :class:`mmvid.augment.base.Mix` argument; nothing is
stored on ``self`` during forward.

Predictions from a subset of the modalities (paper Eq. 5's masking: unimodal scores, Shapley
coalitions, balancers that drop a modality) all come from :meth:`MultimodalClassifier.masked_features`:
the absent modalities' *encoder* features are zeroed first, then the present ones are calibrated
among themselves, then the forward's feature-stage mix is applied, then the fusion and head run. An
absent modality is thus absent for the whole model, calibration included.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.models.encoders import build_encoder, encoder_choice
from mmvid.models.fusions import split_head_fusions
from mmvid.models.init import initialise
from mmvid.registry import CALIBRATIONS, FUSIONS, check_plugin_settings


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, C)
    features: dict[str, torch.Tensor]  # per modality (B, d_m), after calibration and any feature mixing
    fused: torch.Tensor  # (B, output_dim), after any fused-stage mixing
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. calibration gates
    tokens: dict[str, torch.Tensor] | None = None  # per modality (B, N_m, d_m) when asked for (token-level mixing)
    mix: Any = None  # the Mix applied in this forward (balancers derive per-modality targets from it)
    # per modality (B, d_m): the encoders' features before calibration and before feature-stage mixing
    # (after input-stage mixing); what :meth:`MultimodalClassifier.masked_features` starts from
    raw: dict[str, torch.Tensor] = field(default_factory=dict)


def check_calibration(fusion: str, calibrate: bool) -> None:
    """Refuse the pre-fusion calibration with a fusion that exchanges information between the encoders
    (one with ``encode``, whose blocks sit between encoder stages), where the calibration would only see
    features that already carry the other modalities, i.e. it would not be pre-fusion."""
    if calibrate and hasattr(FUSIONS.get(fusion), "encode"):
        raise MmvidError(f"model.calibrate=true with model.fusion={fusion}: {fusion}'s blocks exchange information "
                         f"between the encoders, so a calibration of their features would not be pre-fusion; "
                         f"set model.calibrate=false (--no-calibrate) or choose another fusion")


class MultimodalClassifier(nn.Module):
    def __init__(self, modalities: list[str], num_classes: int, encoder: str = "resnet18", width: int = 32,
                 fusion: str = "concat", calibrate: bool = False, fusion_args: dict | None = None,
                 unimodal: str = "mask", init: str = "ogm-ge", aux_loss: dict[str, float] | None = None,
                 calibration_args: dict | None = None, encoders: dict[str, tuple[str, dict]] | None = None,
                 freeze: str = "none") -> None:
        """``encoder``: every modality's encoder (an ENCODERS name), ``width`` the small one's; ``encoders``:
        modality -> (name, settings) where a modality has its own (:func:`mmvid.models.encoders.encoder_choice`).
        ``freeze``: none | encoders | bn (:meth:`train`)."""
        super().__init__()
        check_calibration(fusion, calibrate)
        self.modalities = list(modalities)
        self.num_classes = num_classes
        choice = {m: (encoders or {}).get(m, (encoder, {})) for m in self.modalities}
        self.encoders = nn.ModuleDict({m: build_encoder(choice[m][0], m, choice[m][1], width)
                                       for m in self.modalities})
        flat = [m for m in self.modalities if not self.encoders[m].stages]
        if hasattr(FUSIONS.get(fusion), "encode") and flat:
            raise MmvidError(f"model.fusion={fusion} runs the encoders stage by stage, which encoder "
                             f"{self.encoders[flat[0]].kind!r} ({flat[0]}) does not; use resnet18, resnet34, "
                             f"resnet50 or small, or another fusion")
        dims = {m: self.encoders[m].output_dim for m in self.modalities}
        self.calibration: nn.Module | None = None
        if calibrate:
            from mmvid.models.calibration import PreFusionCalibration

            cal = check_plugin_settings(CALIBRATIONS, "prefusion", calibration_args or {})
            self.calibration = PreFusionCalibration(dims, **asdict(cal))
        # The fusion's settings, checked (an unknown key is an error) and given to its constructor as keywords.
        self.fusion = FUSIONS.build(fusion, dims, **asdict(check_plugin_settings(FUSIONS, fusion, fusion_args or {})))
        self.head = self.fusion.make_head(num_classes)
        if unimodal == "head" and not hasattr(self.head, "modality_logits"):
            raise MmvidError(f"augment.args.unimodal=head needs a fusion with one classifier per modality (e.g. decision, or sum with form=logits); "
                             f"model.fusion={fusion} has one joint head: use augment.args.unimodal=mask")
        self.unimodal = unimodal  # how unimodal_logits predicts from one modality (not a parameter, not in state_dict)
        # Remix's baseline heads h_m: (B, d_m) -> (B, C), one per modality named in model.aux_loss; trained by the
        # loop's auxiliary loss (mmvid.engine.step.AuxiliaryLoss) on ModelOutput.features, never used for prediction.
        unknown = sorted(set(aux_loss or {}) - set(self.modalities))
        if unknown:
            raise MmvidError(f"model.aux_loss names {unknown}, not in data.modalities {self.modalities}")
        self.aux_heads = nn.ModuleDict({m: nn.Linear(dims[m], num_classes) for m in self.modalities
                                        if m in (aux_loss or {})}) if aux_loss else None
        initialise(self, init)
        self.freeze = freeze
        if freeze == "encoders":  # linear probing: nothing of the encoders trains
            self.encoders.requires_grad_(False)

    def train(self, mode: bool = True) -> "MultimodalClassifier":
        """``nn.Module.train``, then ``model.freeze``: ``encoders`` keeps the encoders in eval mode (BN running
        statistics neither used from the batch nor updated), ``bn`` does so for their BatchNorm layers only."""
        super().train(mode)
        freeze = getattr(self, "freeze", "none")
        if mode and freeze == "encoders":
            self.encoders.eval()
        elif mode and freeze == "bn":
            for mod in self.encoders.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.eval()
        return self

    def _encoded(self, inputs: dict[str, torch.Tensor], tokens: bool = False):
        """(features m -> (B, d_m) before calibration, tokens m -> (B, N_m, d_m) or None, extras); a fusion
        with ``encode`` (blocks between encoder stages, :class:`mmvid.models.fusions.Fusion`) runs the encoders itself."""
        if hasattr(self.fusion, "encode"):
            return self.fusion.encode(self.encoders, inputs, tokens)
        if not tokens:
            return {m: self.encoders[m](inputs[m]) for m in self.modalities}, None, {}
        toks = {m: self.encoders[m].tokens(inputs[m]) for m in self.modalities}
        return {m: toks[m].mean(1) for m in self.modalities}, toks, {}

    def encode(self, inputs: dict[str, torch.Tensor], calibrate: bool = True) -> dict[str, torch.Tensor]:
        """Per-modality features (B, d_m): calibrated when the module is on and ``calibrate`` (the default);
        ``calibrate=False`` gives the encoders' features, what :meth:`masked_features` starts from."""
        feats = self._encoded(inputs)[0]
        if calibrate and self.calibration is not None:
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
        raw = feats
        if self.calibration is not None:
            feats, gates = self.calibration(feats)
            extras = {**extras, **gates}
        if mix is not None and mix.stage == "feature":
            feats = mix.apply(feats)
        fused = self.fusion(feats)
        if mix is not None and mix.stage == "fused":
            fused = mix.apply({"fused": fused})["fused"]
        return ModelOutput(self.head(fused), feats, fused, extras, toks, mix, raw)

    def masked_features(self, raw: dict[str, torch.Tensor], keep: Collection[str] | torch.Tensor, mix=None,
                        keep_graph: bool = False) -> dict[str, torch.Tensor]:
        """The fusion's inputs m -> (B, d_m) when only the modalities in ``keep`` are present: the one place
        where mmvid masks a modality (paper Eq. 5), used by every masked prediction.

        raw: m -> (B, d_m) encoder features before calibration (``ModelOutput.raw``, ``encode(x, calibrate=False)``).
        keep: the modalities present, either a collection of names (the same for every sample; may be
        empty) or a (M, B) 0/1 tensor in ``self.modalities`` order (per sample: a balancer that drops modalities clip by clip).

        1. an absent feature is zero: ``zeros_like`` (no gradient path), or ``z * 0`` with ``keep_graph`` (the
           references' in-place zeroing: the absent encoder gets a zero gradient); a per-sample mask multiplies
           z_m,i by keep[m, i];
        2. calibration, when on, of the present modalities among themselves (an absent one is not in any
           context: :class:`mmvid.models.calibration.PreFusionCalibration` with ``present``);
        3. the forward's feature-stage ``mix`` (other stages: nothing; the input stage is already in ``raw``).
           With a per-sample mask, row i's partner pi(i) is masked and calibrated with row i's modalities, so
           row i mixes nothing of a modality absent from it.

        Without calibration the values equal those of masking the forward's (mixed) features. A fusion with
        ``encode`` exchanges information inside the encoders, so there ``raw`` itself depends on every input: masking
        removes a modality's feature, not what its input has already passed to the others.
        """
        per_sample = isinstance(keep, torch.Tensor)
        if not per_sample:
            keep = set(keep)
            unknown = keep - set(self.modalities)
            if unknown:
                raise ValueError(f"masked_features: {sorted(unknown)} are not modalities of the model {self.modalities}")

        def mask(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            if per_sample:
                return {m: feats[m] * keep[i].to(feats[m].device, feats[m].dtype).view(-1, *([1] * (feats[m].dim() - 1)))
                        for i, m in enumerate(self.modalities)}
            return {m: feats[m] if m in keep else (feats[m] * 0 if keep_graph else torch.zeros_like(feats[m]))
                    for m in self.modalities}

        def calibrate(feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            return feats if self.calibration is None else self.calibration(feats, present=keep)[0]

        z = calibrate(mask(raw))
        if mix is None or mix.stage != "feature":
            return z
        if not per_sample:  # every row has the same modalities: mixing the masked rows is the same mask
            return mix.apply(z)
        partners = calibrate(mask({m: raw[m][mix.perm] for m in self.modalities}))
        return mix.apply(z, partners)

    def masked_logits(self, raw: dict[str, torch.Tensor], keep: Collection[str] | torch.Tensor, mix=None,
                      rows: torch.Tensor | None = None, keep_graph: bool = False) -> torch.Tensor:
        """(B, C) logits, or (R, C) for the batch ``rows`` (R,), of the fused model with only ``keep`` present:
        ``classify`` on :meth:`masked_features` (which see). ``rows`` are picked after the mix (a row's partner
        may lie outside them), so the fusion and head see only those rows, as a balancer's subset."""
        z = self.masked_features(raw, keep, mix, keep_graph)
        if rows is not None:
            z = {m: v[rows] for m, v in z.items()}
        return self.classify(z)

    def unimodal_logits(self, raw: dict[str, torch.Tensor], mix=None) -> dict[str, torch.Tensor]:
        """m -> (B, C) from the pre-calibration features ``raw`` (m -> (B, d_m), ``ModelOutput.raw``) and the
        forward's ``mix``. Paper Eq. 5 (``unimodal="mask"``): modality m alone = the fused model with every other
        modality absent (:meth:`masked_logits`). ``unimodal="head"`` (decision fusion): modality m's own
        classifier W_m z_m + b_m on z_m as it is with m alone (calibrated with itself when calibration is on)."""
        if self.unimodal == "head":
            return {m: self.head.modality_logits(self.fusion(self.masked_features(raw, {m}, mix)))[m]
                    for m in self.modalities}
        return {m: self.masked_logits(raw, {m}, mix) for m in self.modalities}

    def split_head_logits(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """OGM-GE's unimodal logits (its main.py), an alternative to Eq. 5's masking: each modality's own
        part of the head, m -> (B, C), as the fusion splits it (:meth:`mmvid.models.fusions.Fusion.split_logits`).
        Per-modality heads (sum with form=logits, decision): W_m z_m + b_m; one linear head on [z_a; z_v; ...]
        (concat) or on sum_m z_m (sum, form=feature): W_m z_m + b / M (W_m = W's columns of modality m for concat,
        all of W for sum), the bias shared out over the M modalities as the reference halves it for two."""
        if not self.fusion.split_head:
            raise MmvidError(f"split-head unimodal scores need fusion {split_head_fusions()}, not "
                             f"{type(self.fusion).__name__}; use balance.args.score=mask (paper Eq. 5)")
        return self.fusion.split_logits(self.head, feats)


def make_classifier(cfg, num_classes: int, unimodal: str = "mask") -> MultimodalClassifier:
    """The classifier a config's ``data`` and ``model`` sections describe. ``unimodal``: how it predicts a modality
    alone, which the augmentation that trains it decides (:meth:`mmvid.augment.base.Augmentation.unimodal_prediction`;
    :func:`mmvid.engine.model.build_model` asks it)."""
    return MultimodalClassifier(cfg.data.modalities, num_classes, cfg.model.encoder, cfg.model.width,
                                cfg.model.fusion, cfg.model.calibrate, cfg.model.fusion_args, unimodal,
                                cfg.model.init, cfg.model.aux_loss, cfg.model.calibration_args,
                                {m: encoder_choice(cfg.model, m) for m in cfg.data.modalities}, cfg.model.freeze)
