"""Pretrained weights into an encoder (``model.encoders.<m>.weights``, ``model.init_from``): the state dict of
a torchvision or timm network, or of an mmvid run's encoder, loaded into :meth:`Encoder.weights_module`.

* Wrappers are unwrapped: ``{"state_dict": ...}`` / ``{"model": ...}``, a ``module.`` prefix (DDP), an mmvid
  model's ``encoders.<m>.`` and an encoder's ``backbone.`` prefix.
* The pretrained network's classifier (:attr:`Encoder.head_keys`, e.g. torchvision's ``fc.``) is dropped.
* First convolution (:attr:`Encoder.first_conv`): RGB kernels W (C_out, 3, k...) loaded into an encoder of
  C_in = 1 (spectrogram) or 2 (flow) input channels become W' = mean_c W[:, c] repeated C_in times, the common
  recipe (TSN's cross-modality initialisation for flow; AST / PANNs-style ImageNet transfer to spectrograms);
  the returned notes say so.
* Any other difference is one line naming the missing keys, the unexpected keys and the shapes that differ.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from mmvid.errors import MmvidError

WRAPPERS = ("state_dict", "model", "module")
WEIGHT_NAME = re.compile(r"[A-Z][A-Z0-9_]*")  # a torchvision weights enum member: IMAGENET1K_V1, KINETICS400_V1


def is_weight_name(spec: str) -> bool:
    """``spec`` is a torchvision weight name (upper case, no path) rather than a file."""
    return WEIGHT_NAME.fullmatch(str(spec)) is not None and not Path(spec).exists()


def unwrap(obj: Any, modality: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded weights file as one state dict, wrappers and prefixes removed (module doc);
    ``{}`` when it holds none, or holds an mmvid model without a ``modality`` encoder."""
    while isinstance(obj, dict):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        return {}
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("encoders.") for k in state):  # an mmvid model: only this modality's encoder
        prefix = f"encoders.{modality}."
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if state and all(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items()}
    return state


def adapt_first_conv(weight: torch.Tensor, in_ch: int) -> torch.Tensor:
    """(C_out, 3, *k) RGB kernels -> (C_out, in_ch, *k): the mean over the three input channels, repeated."""
    return weight.mean(1, keepdim=True).expand(-1, in_ch, *weight.shape[2:]).contiguous()


def _few(keys: list[str], n: int = 4) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "") if keys else "none"


def load_encoder_weights(encoder, state: dict[str, torch.Tensor], label: str) -> list[str]:
    """Copy ``state`` into ``encoder``'s :meth:`weights_module`; returns the notes to print (classifier dropped,
    first convolution adapted). ``label`` names the source in every line (``model.encoders.audio.weights=x.pt``).
    Raises MmvidError, one line, when the keys or shapes differ."""
    target = encoder.weights_module().state_dict()
    notes = []
    head = sorted(k for k in state if k not in target and any(k.startswith(h) for h in encoder.head_keys))
    if head:
        notes.append(f"{label}: the pretrained classifier ({_few(head)}) is not loaded")
        state = {k: v for k, v in state.items() if k not in head}
    key = encoder.first_conv
    if key and key in state and key in target and state[key].dim() == target[key].dim() \
            and state[key].shape[1] == 3 and target[key].shape[1] in (1, 2):
        in_ch = target[key].shape[1]
        state = {**state, key: adapt_first_conv(state[key], in_ch)}
        notes.append(f"{label}: first convolution {key} adapted from 3 input channels (RGB) to {in_ch} "
                     f"({encoder.modality}) by averaging the RGB kernels")
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in sorted(set(state) & set(target))
              if state[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        raise MmvidError(f"{label}: the weights do not fit encoder {encoder.kind!r} of {encoder.modality}: "
                         f"missing keys: {_few(missing)}; unexpected keys: {_few(unexpected)}"
                         + (f"; other shapes: {_few(shapes, 2)}" if shapes else "")
                         + "; give weights of the same architecture")
    with torch.no_grad():
        encoder.weights_module().load_state_dict(state)
    return notes
