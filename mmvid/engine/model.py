"""The model a run's config describes, built with what its plug-ins contribute to it."""

from __future__ import annotations

from mmvid.config import TrainConfig
from mmvid.models.classifier import MultimodalClassifier, make_classifier
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, check_plugin_settings


def build_model(cfg: TrainConfig, num_classes: int) -> MultimodalClassifier:
    """The classifier of ``cfg`` for ``num_classes`` classes: its augmentation says how it predicts a modality alone
    (:meth:`~mmvid.augment.base.Augmentation.unimodal_prediction`), read from its settings through their
    declaration (a run's config holds them all; a config built in code may name only some)."""
    load_plugins()
    settings = check_plugin_settings(AUGMENTS, cfg.augment.name, cfg.augment.args)
    unimodal = AUGMENTS.get(cfg.augment.name).unimodal_prediction(settings)
    return make_classifier(cfg, num_classes, unimodal)
