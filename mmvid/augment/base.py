"""Shared mixing machinery: a :class:`Mix` (partner permutation + per-modality partner weights) is
drawn once and applied to every mixed modality and to the target; the caller's tensors are never
modified in place.

Convention: mixed_i = (1 - w) * x_i + w * x_pi(i), with w the *partner* weight. Classic mixup with
lambda ~ Beta(alpha, alpha) is w = 1 - lambda; a method that draws the partner's weight itself uses it as w.
The target is y~_i = (1 - w_y) * onehot(y_i) + w_y * onehot(y_pi(i)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mmvid.registry import AUGMENTS, Plugin


@dataclass
class Mix:
    stage: str  # "input" | "feature" | "fused"
    perm: torch.Tensor  # (B,) partner index pi(i)
    weights: dict[str, float | torch.Tensor]  # key -> partner weight w (scalar or (B,)); absent keys are not mixed
    target_weight: float | torch.Tensor  # w_y

    def apply(self, tensors: dict[str, torch.Tensor],
              partners: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """k -> (1 - w_k) x_i + w_k x_pi(i) for every key with a weight; ``partners`` (k -> same shape as x)
        replaces x_pi(i) row by row (a masked prediction's partner, masked as row i is)."""
        out = {}
        for k, x in tensors.items():
            w = self.weights.get(k, self.weights.get("*"))
            if w is None:
                out[k] = x
                continue
            if isinstance(w, torch.Tensor):
                w = w.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
            out[k] = (1 - w) * x + w * (x[self.perm] if partners is None else partners[k])
        return out

    def soft_target(self, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """(B, C) mixed one-hot target; every row sums to 1."""
        onehot = F.one_hot(y, num_classes).float()
        w = self.target_weight
        if isinstance(w, torch.Tensor):
            w = w.float().view(-1, 1)
        return (1 - w) * onehot + w * onehot[self.perm]


def modality_mix(mix: Mix | None, m: str) -> Mix | None:
    """The mix as modality m's own prediction sees it: at the input or feature stage z_m was mixed with its
    partner weight ``weights[m]`` (every modality for mixup's "*", or only some), so its
    target is mixed by w_m; an unmixed modality, or fused-stage mixing (MM), keeps the plain label."""
    if mix is None or mix.stage == "fused":
        return None
    w = mix.weights.get(m, mix.weights.get("*"))
    return None if w is None else Mix(mix.stage, mix.perm, {m: w}, w)


def target_probability(logits: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """(B,) probability given to the (mixed) target: p_i[y_i] without a mix, sum_c y~_i,c p_i,c with one."""
    p = logits.float().softmax(1)
    if mix is None:
        return p.gather(1, y[:, None]).squeeze(1)
    return (mix.soft_target(y, logits.shape[1]) * p).sum(1)


def mixed_cross_entropy(logits: torch.Tensor, y: torch.Tensor, mix: Mix | None) -> torch.Tensor:
    """CE(logits, y) without a mix; else (1 - w_y) * CE(., y_i) + w_y * CE(., y_pi(i)) (= CE with soft target)."""
    if mix is None:
        return F.cross_entropy(logits.float(), y)
    target = mix.soft_target(y, logits.shape[1])
    return -(target * F.log_softmax(logits.float(), dim=1)).sum(1).mean()


class Augmentation(Plugin):
    """Interface of the AUGMENTS family.

    The engine calls, in order: ``on_epoch_start(ctx)`` once per epoch; per step ``compute(model,
    inputs, y, ctx) -> (ModelOutput, loss)``; ``log()`` for the epoch's metrics line. State that
    must survive a resume goes through ``state_dict``/``load_state_dict``. Its settings (``augment.args``)
    are its class's ``Settings`` dataclass, read as ``self.settings`` (checked: an unknown key is an error).
    """

    family = AUGMENTS
    stage: str | None = None
    # True (decided in ``setup``): each training batch carries the clips' intensity targets (ctx.batch_intensity)
    needs_intensity: bool = False
    notes: list[str] | tuple[str, ...] = ()  # one-line notes from ``setup`` (e.g. a fallback), printed once by the engine

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__()
        self.cfg = cfg  # AugmentConfig (name + args)
        self.settings = self.read_settings(cfg)
        self.modalities = list(modalities)

    def sample(self, y: torch.Tensor, ctx) -> Mix | None:
        return None

    def compute(self, model, inputs: dict[str, torch.Tensor], y: torch.Tensor, ctx):
        mix = self.sample(y, ctx)
        out = model(inputs, mix=mix)
        return out, mixed_cross_entropy(out.logits, y, mix)

    @classmethod
    def unimodal_prediction(cls, settings) -> str:
        """How the model this augmentation trains predicts a modality alone (read when the model is built, from
        the checked ``settings``): ``"mask"`` (paper Eq. 5: the other modalities' features zeroed, the one
        head) or ``"head"`` (a classifier per modality, decision fusion). Default ``"mask"``."""
        return "mask"

    def setup(self, model, ctx):
        """Once, after the model is built: return trainable modules of the augmentation (or None)."""
        return None



def random_perm(n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randperm(n, generator=generator).to(device)


def beta_sample(alpha: float, gen: torch.Generator) -> float:
    """lambda ~ Beta(alpha, alpha) = Ga / (Ga + Gb), drawn through the seeded ``gen`` (resumable).

    alpha <= 0 means no mixing (lambda = 1).
    """
    if alpha <= 0:
        return 1.0
    a, b = _gamma(alpha, gen), _gamma(alpha, gen)
    return a / (a + b) if a + b > 0 else 0.5


def _gamma(alpha: float, gen: torch.Generator) -> float:
    """Marsaglia-Tsang gamma sampler driven by ``gen`` (torch's Gamma cannot take a generator)."""
    boost = 1.0
    if alpha < 1.0:
        boost = float(torch.rand((), generator=gen)) ** (1.0 / alpha)
        alpha += 1.0
    d = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = float(torch.randn((), generator=gen))
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = float(torch.rand((), generator=gen))
        if math.log(max(u, 1e-300)) < 0.5 * x * x + d - d * v + d * math.log(v):
            return boost * d * v
