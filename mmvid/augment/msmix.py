"""MS-Mix (seed 004, Zhu et al.), adapted from regression sentiment analysis to classification.

Three parts, all on the per-modality features z_m (B, d_m) and tokens (B, N_m, d_m) of one batch:

* SASS, sample selection: S = mean_m cos(z_m,i, z_m,j) (diagonal zeroed, min-max normalised over the
  batch); i is paired with a random j among S_ij > tau whose label is in the same group as y_i
  (``augment.args.groups``, e.g. CREMA-D valence; without groups every class is compatible), else with
  its most similar compatible j; a sample without any compatible partner is not mixed. Contradictory
  labels (different groups) are never paired.
* SIG, intensity-guided ratios: I_m = 3 tanh(Linear(mean_N MHSA_4(tokens_m))) (B,); w_m = min-max of |I_m|
  over the batch; lambda0 ~ Beta(2, 2); lambda_m,i = (lambda0 + w_m,i / (w_m,i + w_m,j)) / 2 is the
  weight of sample i in modality m; the label weight is lambda_y = mean_m lambda_m.
* SAL, alignment: KL(t || softmax_batch(|I_m| / 3)) averaged over modalities, with t the detached
  true-class probability of the fused model normalised over the batch.

Loss = CE(original) + ``mix_weight`` (0.7) CE(mixed, soft target) + ``sal_weight`` (0.5) SAL; the mixed
samples are appended to the batch (their logits come from the same fusion and head).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.augment.base import Augmentation, EpochMeans, Mix, beta_sample
from mmvid.errors import MmvidError
from mmvid.registry import AUGMENTS


class IntensityHead(nn.Module):
    """tokens (B, N, d) -> intensity I (B,) in (-3, 3) through 4-head self-attention and mean pooling."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads if dim % heads == 0 else 1, batch_first=True)
        self.out = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.attn(tokens, tokens, tokens, need_weights=False)
        return 3 * torch.tanh(self.out(h.mean(1)).squeeze(1))


def label_groups(groups: dict[str, list[str]] | None, class_names: list[str]) -> torch.Tensor | None:
    """(C,) group id per class from ``{group: [class names]}``; unlisted classes form groups of their own."""
    if not groups:
        return None
    ids = list(range(len(groups), len(groups) + len(class_names)))
    for g, (name, members) in enumerate(groups.items()):
        for c in members:
            if c not in class_names:
                raise MmvidError(f"augment.args.groups.{name} names class {c!r}, which the cache does not have; "
                                 f"classes: {', '.join(class_names)}")
            ids[class_names.index(c)] = g
    return torch.tensor(ids)


def similarity(feats: dict[str, torch.Tensor]) -> torch.Tensor:
    """SASS matrix (B, B): mean over modalities of cosine similarities, zero diagonal, min-max normalised."""
    s = torch.stack([(lambda z: z @ z.T)(F.normalize(z.detach().float(), dim=1)) for z in feats.values()]).mean(0)
    s.fill_diagonal_(0)
    return (s - s.min()) / (s.max() - s.min()).clamp_min(1e-12)


def select_partners(sim: torch.Tensor, y: torch.Tensor, group_of: torch.Tensor | None, tau: float,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SASS: (perm (B,), valid (B,) bool). Partners share a label group; random among S > tau, else the
    most similar compatible sample; ``valid`` is False where no compatible partner exists."""
    b = len(y)
    g = group_of.to(y.device)[y] if group_of is not None else torch.zeros_like(y)
    compat = g[:, None] == g[None, :]
    compat.fill_diagonal_(False)
    cand = compat & (sim > tau)
    noise = torch.rand(b, b, generator=gen).to(sim.device)
    # Candidates score in [2, 3), fallbacks by similarity in [0, 1], incompatible pairs never.
    key = torch.where(cand, 2 + noise, torch.where(compat, sim, torch.full_like(sim, -float("inf"))))
    return key.argmax(1), compat.any(1)


def sig_lambdas(intensity: dict[str, torch.Tensor], perm: torch.Tensor, lam0: float) -> dict[str, torch.Tensor]:
    """lambda_m,i = (lambda0 + w_m,i / (w_m,i + w_m,pi(i))) / 2 with w_m = min-max |I_m| over the batch (detached)."""
    out = {}
    for m, i in intensity.items():
        a = i.detach().abs()
        w = (a - a.min()) / (a.max() - a.min()).clamp_min(1e-12)
        out[m] = 0.5 * (lam0 + w / (w + w[perm]).clamp_min(1e-12))
    return out


def alignment_loss(intensity: dict[str, torch.Tensor], target_prob: torch.Tensor) -> torch.Tensor:
    """SAL: mean_m KL(t || softmax_batch(|I_m| / 3)), t = target_prob / sum(target_prob)."""
    t = (target_prob.detach().float() / target_prob.detach().float().sum().clamp_min(1e-12)).clamp_min(1e-12)
    kls = [(t * (t.log() - F.log_softmax(i.float().abs() / 3, dim=0))).sum() for i in intensity.values()]
    return torch.stack(kls).mean()


@AUGMENTS.register("msmix")
class MSMix(Augmentation):
    """MS-Mix: label-aware pairing (SASS), per-modality intensity ratios (SIG) and the KL alignment loss (SAL).
    ``augment.args``: tau (0.4), mix_weight (0.7), sal_weight (0.5), groups ({group: [class names]})."""

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        a = dict(cfg.args)
        self.tau = float(a.get("tau", 0.4))
        self.mix_weight = float(a.get("mix_weight", 0.7))
        self.sal_weight = float(a.get("sal_weight", 0.5))
        self.groups = a.get("groups")
        self.heads: nn.ModuleDict | None = None
        self.group_of: torch.Tensor | None = None
        self.stats = EpochMeans()

    def setup(self, model, ctx) -> nn.Module:
        net = getattr(model, "module", model)  # DDP wrapper or the classifier
        self.heads = nn.ModuleDict({m: IntensityHead(net.encoders[m].output_dim) for m in self.modalities})
        self.group_of = label_groups(self.groups, list(ctx.info.class_names))
        return self.heads

    def on_epoch_start(self, ctx) -> None:
        self.stats = EpochMeans()

    def compute(self, model, inputs, y, ctx):
        if self.heads is None:
            raise MmvidError("augment msmix was used before setup(model, ctx); the engine calls it after building the model")
        out = model(inputs, tokens=True)
        loss = F.cross_entropy(out.logits.float(), y)
        perm, valid = select_partners(similarity(out.features), y, self.group_of, self.tau, ctx.generator)
        intensity = {m: self.heads[m](out.tokens[m]) for m in self.modalities}
        lams = sig_lambdas(intensity, perm, beta_sample(2.0, ctx.generator))
        lam_y = torch.stack(list(lams.values())).mean(0)
        mix = Mix("feature", perm, {m: 1 - lam for m, lam in lams.items()}, 1 - lam_y)
        mixed_logits = model.classify(mix.apply(out.features))
        per_row = -(mix.soft_target(y, mixed_logits.shape[1]) * F.log_softmax(mixed_logits.float(), 1)).sum(1)
        mixed_ce = (per_row * valid).sum() / valid.sum().clamp_min(1)
        sal = alignment_loss(intensity, out.logits.detach().float().softmax(1).gather(1, y[:, None]).squeeze(1))
        loss = loss + self.mix_weight * mixed_ce + self.sal_weight * sal
        self.stats.add({"msmix_sal": float(sal.detach()), "msmix_paired": float(valid.float().mean()),
                        **{f"msmix_lambda_{m}": float(lam.mean()) for m, lam in lams.items()}})
        return out, loss

    def log(self) -> dict[str, Any]:
        return self.stats.means()

    def state_dict(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict() if self.heads is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.heads is not None and state.get("heads") is not None:
            self.heads.load_state_dict(state["heads"])
