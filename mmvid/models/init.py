"""Initial weights of a built classifier (``model.init``), as the reference code of the field draws them.

Three rules, each applied to a model whose encoders are ResNet-18 (the references' backbone):

``ogm-ge`` (default; GeWu-Lab/OGM-GE_CVPR2022 ``main.py``: ``model.apply(weight_init)``, ``utils/utils.py``;
PMR's code does the same) on the fusion, the head, the auxiliary heads and the encoders, in that order (the
order of OGM-GE's ``AVClassifier`` children: ``fusion_module``, ``audio_net``, ``visual_net``):

    Conv2d       W ~ N(0, 2 / fan_out),  fan_out = C_out * k_h * k_w   (kaiming_normal_, fan_out, relu)
    BatchNorm2d  weight = 1, bias = 0
    Linear       W ~ N(0, 2 / (fan_in + fan_out)), b = 0               (xavier_normal_)

``remix`` (MatthewMaxy/Remix_ICML2025 ``baseline.py`` / ``train.py``; also MMCosine's ``main_CD.py`` and
BalanceBenchmark, none of which calls ``weight_init``): only the loop of the backbone's ``ResNet.__init__``
(``models/backbone.py``), encoder by encoder: Conv2d as above, BatchNorm2d weight ~ N(1, 0.02²), bias 0.
Linear layers keep PyTorch's default, W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

``torch``: nothing is re-drawn: torchvision's ResNet-18 init (the same conv and BN rule as ``ogm-ge``) except
the replaced 1-channel audio / 2-channel flow ``conv1`` (PyTorch's default, std 1/sqrt(3 * 49 C_in): 0.082
for audio instead of the references' 0.025) and PyTorch's default for every Linear: mmvid before ``model.init``.

Only Conv2d, BatchNorm2d and Linear modules are touched, as in the references: the calibration module
(identity at the start by its own zero init) and parameters that are not a Linear (MMCosine's class
weights) keep theirs. A model with the small encoder (CPU-sized, in no reference) keeps PyTorch's default
under every setting, so that its figures do not depend on this option.
"""

from __future__ import annotations

from torch import nn

from mmvid.config.sections import INITS
from mmvid.errors import MmvidError


def ogm_ge_weight_init(m: nn.Module) -> None:
    """OGM-GE's ``weight_init`` on one module (a no-op for any other kind)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def backbone_init(m: nn.Module) -> None:
    """The init loop of the references' ``ResNet.__init__`` on one module: Conv2d kaiming-normal (fan_out, relu);
    BatchNorm2d / GroupNorm weight ~ N(1, 0.02²), bias 0."""
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(m.weight, mean=1.0, std=0.02)
        nn.init.zeros_(m.bias)


def initialise(model: nn.Module, how: str) -> None:
    """Re-draw the initial weights of a freshly built :class:`~mmvid.models.classifier.MultimodalClassifier`
    per ``how`` (one of :data:`INITS`), drawing from torch's global generator in a fixed module order
    (so the same seed gives the same weights)."""
    if how not in INITS:
        raise MmvidError(f"model.init={how!r} is not one of {list(INITS)}")
    encoders = list(model.encoders.values())
    if how == "torch" or any(enc.kind != "resnet18" for enc in encoders):
        return
    if how == "ogm-ge":
        parts = [model.fusion, model.head, getattr(model, "aux_heads", None), *encoders]
        for part in parts:
            if part is not None:
                part.apply(ogm_ge_weight_init)
    else:
        for enc in encoders:
            for m in enc.backbone.modules():
                backbone_init(m)
