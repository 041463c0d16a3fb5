"""Modality dropout: train on clips that randomly lose one modality, so no modality can carry the model alone.

    mmvid train --recipe demo --plugin examples/augmentation.py --aug modality-dropout
    mmvid train --recipe demo --plugin examples/augmentation.py --aug modality-dropout --set augment.args.p=0.3
    mmvid evaluate RUN --plugin examples/augmentation.py

For each training clip i independently, with probability p one of its M modalities, chosen uniformly, is
replaced by zeros at the input (audio (B, 1, F, L), video (B, T, 3, H, W): zero is the mean frame after
normalisation). With keep (M, B) the 0/1 mask,

    x~_m = keep[m, :] * x_m          loss = CE(f(x~), y)          (no label change: the clip keeps its class)

Evaluation sees every modality (augmentations act in training only). The draws come from the run's seeded
generator, so a resumed run draws what the uninterrupted one would have. The fraction of dropped inputs per
modality goes to metrics.jsonl (``dropped_<m>``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmvid.augment.base import Augmentation
from mmvid.registry import AUGMENTS
from mmvid.schema import spec


@AUGMENTS.register("modality-dropout", doc="Zero one random modality of a clip's input with probability p (example plug-in).")
class ModalityDropout(Augmentation):
    stage = "input"

    @dataclass
    class Settings:
        p: float = spec(0.5, ge=0.0, le=1.0, help="probability that a training clip loses one (random) modality")

    def keep_mask(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        """(M, B) float: 0 where a clip's modality is dropped (at most one per clip), else 1."""
        drop = torch.rand(batch, generator=gen) < self.settings.p
        which = torch.randint(len(self.modalities), (batch,), generator=gen)
        return 1.0 - (F.one_hot(which, len(self.modalities)).T.float() * drop.float())

    def compute(self, model, inputs: dict[str, torch.Tensor], y: torch.Tensor, ctx):
        keep = self.keep_mask(y.shape[0], ctx.generator).to(y.device)
        dropped = dict(inputs)
        for k, m in enumerate(self.modalities):
            x = inputs[m]
            dropped[m] = x * keep[k].to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        # this step's share of dropped clips per modality; the base class averages them over the epoch (log())
        self.stats.add({f"dropped_{m}": 1.0 - float(keep[k].mean()) for k, m in enumerate(self.modalities)})
        out = model(dropped)
        return out, F.cross_entropy(out.logits.float(), y)
