"""A fresh run's initial encoder weights from files (``model.init_from``, ``model.encoders.<m>.weights``), and
the SHA-256 of each file recorded in the run's config (``model.init_from_sha256``,
``model.encoders.<m>.weights_sha256``). A resumed run takes its weights from its checkpoint instead.

Files are read with ``torch.load(weights_only=True)``: a weights file from others runs no code. A torchvision
weight name (``IMAGENET1K_V1``) is fetched by torchvision into its cache (``$TORCH_HOME/hub/checkpoints``; a
download only when the file is not there yet) and read from there.
"""

from __future__ import annotations

import hashlib
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from mmvid.engine.checkpoints import _unsafe_globals, checkpoint_file, load_checkpoint
from mmvid.errors import MmvidError
from mmvid.models.pretrained import is_weight_name, load_encoder_weights, unwrap


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load(path: Path, label: str) -> Any:
    """A weights file's content, tensors and plain containers only; every problem one line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        names = _unsafe_globals(path) if "weights only load failed" in str(e).lower() else []
        if names:
            raise MmvidError(f"{label}: {path} holds objects other than tensors ({', '.join(names[:3])}), which could "
                             f"run code on loading; it is not loaded: save a plain state dict "
                             f"(torch.save(model.state_dict(), path))") from None
        raise MmvidError(f"{label}: cannot read {path}: damaged, or not a PyTorch weights file") from None
    except Exception:
        raise MmvidError(f"{label}: cannot read {path}: damaged, or not a PyTorch weights file") from None


def read_weights(spec: str, encoder, label: str) -> tuple[dict[str, torch.Tensor], Path]:
    """(state dict for ``encoder``, the file read) from ``spec``: a torchvision weight name, an mmvid run folder
    or checkpoint (its encoder of ``encoder.modality``), or a state dict file."""
    modality = encoder.modality
    if is_weight_name(spec):
        path = _torchvision_file(spec, encoder, label)
        return unwrap(_load(path, label), modality), path
    path = Path(spec).expanduser()
    if not path.exists():
        raise MmvidError(f"{label}: no such file or run folder; give a state dict file, an mmvid run folder or "
                         f"checkpoint, or a torchvision weight name (IMAGENET1K_V1)")
    if path.is_dir():
        path = checkpoint_file(path)
        obj = load_checkpoint(path)
    else:
        obj = _load(path, label)
    state = unwrap(obj, modality)
    if not state:
        run = isinstance(obj, dict) and "config" in obj
        raise MmvidError(f"{label}: {path} holds no {modality} encoder" if run else
                         f"{label}: {path} holds no state dict (a mapping of parameter names to tensors)")
    return state, path


def _torchvision_file(name: str, encoder, label: str) -> Path:
    """torchvision's cached file of weight ``name`` for ``encoder``'s architecture, downloaded first if absent."""
    from torch.hub import download_url_to_file, get_dir

    weights = encoder.torchvision_weights(name)
    if weights is None:
        raise MmvidError(f"{label}: torchvision has no weights {name!r} for encoder {encoder.kind!r}; give a "
                         f"state dict file, or a name torchvision lists for it (e.g. IMAGENET1K_V1)")
    path = Path(get_dir()) / "checkpoints" / Path(weights.url).name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(weights.url, str(path), progress=False)
        except Exception as e:
            raise MmvidError(f"{label}: cannot download {weights.url} ({type(e).__name__}); when offline, "
                             f"put the file at {path} or give a local state dict") from None
    return path


def _recorded(label: str, path: Path, want: str | None) -> str:
    digest = sha256_file(path)
    if want and want != digest:
        raise MmvidError(f"{label}: {path} changed since this config recorded it (sha256 {want[:12]}, now "
                         f"{digest[:12]}); restore the file, or remove the recorded hash from the config")
    return digest


def load_start_weights(model, cfg) -> list[str]:
    """Before a fresh run's first step: ``model.init_from``'s encoders, then each ``model.encoders.<m>.weights``,
    into ``model``'s encoders; the files' SHA-256 written into ``cfg`` (saved in config.yaml and checkpoints).
    Returns the notes to print (what was loaded, the classifier dropped, first convolutions adapted)."""
    notes: list[str] = []
    mc = cfg.model
    if mc.init_from:
        label = f"model.init_from={mc.init_from}"
        path = checkpoint_file(Path(mc.init_from).expanduser()) if Path(mc.init_from).expanduser().exists() else None
        if path is None:
            raise MmvidError(f"{label}: no such run folder or checkpoint; give a run folder or its checkpoint file")
        ck = load_checkpoint(path)
        found = [m for m in model.modalities if any(k.startswith(f"encoders.{m}.") for k in ck["model"])]
        if not found:
            raise MmvidError(f"{label}: that run has no encoder of {', '.join(model.modalities)}")
        for m in found:
            notes += load_encoder_weights(model.encoders[m], unwrap(ck["model"], m), label)
        left = [m for m in model.modalities if m not in found]
        notes.append(f"{label}: {', '.join(found)} encoder(s) loaded"
                     + (f"; {', '.join(left)} keep(s) its own initial weights" if left else ""))
        mc.init_from_sha256 = _recorded(label, path, mc.init_from_sha256)
    for m in model.modalities:
        own = getattr(mc.encoders, m)
        if not own.weights:
            continue
        label = f"model.encoders.{m}.weights={own.weights}"
        state, path = read_weights(own.weights, model.encoders[m], label)
        notes += load_encoder_weights(model.encoders[m], state, label)
        own.weights_sha256 = _recorded(label, path, own.weights_sha256)
        notes.append(f"{label}: loaded (sha256 {own.weights_sha256[:12]})")
    return notes
