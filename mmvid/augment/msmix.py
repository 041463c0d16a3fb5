"""MS-Mix (seed 004, Zhu et al.; reference HongyuZhu-s/MS-Mix, ``models/MS_MIX.py`` function ``MS_Mix`` and the
loss of ``trains/ALMT.py``), adapted from regression sentiment analysis to classification.

Three parts, on the per-modality features z_m (B, d_m) and tokens (B, N_m, d_m) of one batch:

* SASS, sample selection: S = mean_m cos(z_m,i, z_m,j), diagonal zeroed, min-max normalised over the
  off-diagonal entries (0.5 everywhere when they are all equal). ``pairing: reference``: the candidates are
  every ordered pair (i, j) with S_ij > tau; with fewer than B of them, the 2B most similar pairs i < j
  instead; B pairs are drawn at random from the candidates (a sample may be drawn twice or not at all).
  ``pairing: anchor`` (mmvid's earlier form): every i gets one random partner above tau, else its most
  similar one. Classification adds ``augment.args.groups`` (e.g. CREMA-D valence): pairs never cross label
  groups (without groups every class is compatible, as in the reference, which has no such check).
* SIG, intensity-guided ratios: I_m = 3 tanh(Linear(mean_N LayerNorm(x + MHSA_4(x)))) (B,) for the input x =
  the modality's tokens (``intensity_input: tokens``) or its pooled feature as one token (``feature``: what
  the reference's ``MS_Mix`` receives); w_m = min-max of |I_m| over the batch; per pair
  lambda0 ~ Beta(2, 2) and lambda_m = (lambda0 + (w_m,i + e) / (w_m,i + w_m,j + 2e)) / 2, e = 1e-8, the weight
  of sample i (not detached: the mixed loss trains the intensity heads too, as in the reference);
  mixed z_m = lambda_m z_m,i + (1 - lambda_m) z_m,j; label weight lambda_y = mean_m lambda_m.
* SAL, alignment (``sal: reference``): 1000 sum_m KL_batchmean(t || q_m), q_m = softmax_batch(|I_m| / 3) + e,
  t = softmax_batch(s) + e with s the detached true-class probability of the fused model (the classification
  stand-in for the reference's regression intensity |y| / 3, both in [0, 1]). ``sal: mean_kl`` (mmvid's
  earlier form): mean_m KL(s / sum s || softmax_batch(|I_m| / 3)).

Loss = CE(original) + ``mix_weight`` (0.7) CE(mixed, soft target) + ``sal_weight`` (0.5) SAL; the mixed
samples go through the same fusion and head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.augment.base import Augmentation, EpochMeans, beta_sample
from mmvid.errors import MmvidError
from mmvid.registry import AUGMENTS

EPS = 1e-8  # the reference's epsilon in the ratios, the min-max and the SAL distributions


class IntensityHead(nn.Module):
    """tokens (B, N, d) -> intensity I (B,) in (-3, 3), the reference's ``IntensityPredictor``: inputs wider
    than 2000 are projected to 1024, zero-padded to a multiple of the 4 heads, one fused q/k/v projection,
    scaled dot-product attention without an output projection, LayerNorm(x + attention), mean over N,
    Linear(., 1), 3 tanh."""

    def __init__(self, dim: int, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.reduce = nn.Linear(dim, 1024) if dim > 2000 else None
        width = 1024 if dim > 2000 else dim
        self.pad = (heads - width % heads) % heads
        self.width = width + self.pad
        self.qkv = nn.Linear(self.width, 3 * self.width)
        self.norm = nn.LayerNorm(self.width)
        self.out = nn.Linear(self.width, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = tokens if self.reduce is None else self.reduce(tokens)
        x = F.pad(x, (0, self.pad)) if self.pad else x
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, dim=-1))
        attn = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        h = self.norm(attn.transpose(1, 2).reshape(b, n, self.width) + x)
        return 3 * torch.tanh(self.out(h.mean(1)).squeeze(-1))


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
    """SASS matrix (B, B): mean over modalities of cosine similarities, min-max normalised over the off-diagonal
    entries (0.5 when they are all equal), zero diagonal."""
    s = torch.stack([(lambda z: z @ z.T)(F.normalize(z.detach().float(), dim=1)) for z in feats.values()]).mean(0)
    off = ~torch.eye(len(s), dtype=torch.bool, device=s.device)
    vals = s[off]
    if vals.numel() and float(vals.max() - vals.min()) > 1e-8:
        s = (s - vals.min()) / (vals.max() - vals.min())
    elif vals.numel():
        s = torch.full_like(s, 0.5)
    return s.fill_diagonal_(0)


def _compatible(y: torch.Tensor, group_of: torch.Tensor | None) -> torch.Tensor:
    """(B, B) bool: i and j may be mixed (same label group; never i with itself)."""
    g = group_of.to(y.device)[y] if group_of is not None else torch.zeros_like(y)
    compat = g[:, None] == g[None, :]
    return compat.fill_diagonal_(False)


def select_pairs(sim: torch.Tensor, y: torch.Tensor, group_of: torch.Tensor | None, tau: float,
                 gen: torch.Generator, num_mix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SASS as the reference draws it: (idx1, idx2), each (K,), K = min(num_mix or B, candidates).

    Candidates: ordered pairs with S > tau (row-major); fewer than ``num_mix``: the 2 num_mix most similar
    pairs i < j (descending). K of them drawn without replacement by a permutation of the candidates."""
    b = len(y)
    num_mix = b if num_mix is None else num_mix
    compat = _compatible(y, group_of)
    pairs = torch.nonzero(compat & (sim > tau))
    if len(pairs) < num_mix:
        upper = compat & torch.ones_like(compat).triu(1)
        flat = torch.where(upper, sim, torch.full_like(sim, -float("inf"))).flatten()
        top = flat.topk(min(2 * num_mix, int(upper.sum()))).indices
        pairs = torch.stack([top // b, top % b], 1)
    pick = torch.randperm(len(pairs), generator=gen)[:num_mix].to(pairs.device)
    return pairs[pick, 0], pairs[pick, 1]


def select_partners(sim: torch.Tensor, y: torch.Tensor, group_of: torch.Tensor | None, tau: float,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SASS, ``pairing: anchor``: (perm (B,), valid (B,) bool). Partners share a label group; random among
    S > tau, else the most similar compatible sample; ``valid`` is False where no compatible partner exists."""
    b = len(y)
    compat = _compatible(y, group_of)
    cand = compat & (sim > tau)
    noise = torch.rand(b, b, generator=gen).to(sim.device)
    # Candidates score in [2, 3), fallbacks by similarity in [0, 1], incompatible pairs never.
    key = torch.where(cand, 2 + noise, torch.where(compat, sim, torch.full_like(sim, -float("inf"))))
    return key.argmax(1), compat.any(1)


def sig_lambdas(intensity: dict[str, torch.Tensor], idx1: torch.Tensor, idx2: torch.Tensor,
                lam0: float | torch.Tensor) -> dict[str, torch.Tensor]:
    """m -> (K,) weight of sample idx1 in each pair: (lam0 + (w_i + e) / (w_i + w_j + 2e)) / 2, with
    w_m = (|I_m| - min) / (max - min + e) over the batch."""
    out = {}
    for m, i in intensity.items():
        a = i.abs()
        w = (a - a.min()) / (a.max() - a.min() + EPS)
        out[m] = 0.5 * (lam0 + (w[idx1] + EPS) / (w[idx1] + w[idx2] + 2 * EPS))
    return out


def alignment_loss(intensity: dict[str, torch.Tensor], target_prob: torch.Tensor, form: str = "reference") -> torch.Tensor:
    """SAL. ``reference``: 1000 sum_m (1/B) sum_i t_i log(t_i / q_m,i), t = softmax_B(s) + e, q_m = softmax_B(|I_m| / 3) + e;
    ``mean_kl``: mean_m KL(s / sum s || softmax_B(|I_m| / 3)). ``target_prob`` s (B,) in [0, 1] is detached."""
    s = target_prob.detach().float()
    if form == "reference":
        t = F.softmax(s, 0) + EPS
        kls = [(t * (t.log() - (F.softmax(i.float().abs() / 3, 0) + EPS).log())).sum() / len(s) for i in intensity.values()]
        return 1000 * torch.stack(kls).sum()
    t = (s / s.sum().clamp_min(1e-12)).clamp_min(1e-12)
    kls = [(t * (t.log() - F.log_softmax(i.float().abs() / 3, dim=0))).sum() for i in intensity.values()]
    return torch.stack(kls).mean()


CHOICES = {"pairing": ("reference", "anchor"), "sal": ("reference", "mean_kl"), "intensity_input": ("tokens", "feature")}


@AUGMENTS.register("msmix")
class MSMix(Augmentation):
    """MS-Mix: label-aware pairing (SASS), per-modality intensity ratios (SIG) and the KL alignment loss (SAL).
    ``augment.args``: tau (0.4), mix_weight (0.7), sal_weight (0.5), groups ({group: [class names]}),
    pairing (reference | anchor), sal (reference | mean_kl), intensity_input (tokens | feature)."""

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        a = dict(cfg.args)
        self.tau = float(a.get("tau", 0.4))
        self.mix_weight = float(a.get("mix_weight", 0.7))
        self.sal_weight = float(a.get("sal_weight", 0.5))
        self.groups = a.get("groups")
        self.choice = {k: str(a.get(k, allowed[0])) for k, allowed in CHOICES.items()}
        for k, allowed in CHOICES.items():
            if self.choice[k] not in allowed:
                raise MmvidError(f"augment.args.{k}={self.choice[k]!r} is not valid for msmix; choose one of: {', '.join(allowed)}")
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

    def pairs(self, feats: dict[str, torch.Tensor], y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sim = similarity(feats)
        if self.choice["pairing"] == "reference":
            return select_pairs(sim, y, self.group_of, self.tau, gen)
        perm, valid = select_partners(sim, y, self.group_of, self.tau, gen)
        return torch.arange(len(y), device=y.device)[valid], perm[valid]

    def compute(self, model, inputs, y, ctx):
        if self.heads is None:
            raise MmvidError("augment msmix was used before setup(model, ctx); the engine calls it after building the model")
        out = model(inputs, tokens=True)
        loss = F.cross_entropy(out.logits.float(), y)
        src = out.tokens if self.choice["intensity_input"] == "tokens" else {m: z[:, None] for m, z in out.features.items()}
        intensity = {m: self.heads[m](src[m]) for m in self.modalities}
        sal = alignment_loss(intensity, out.logits.detach().float().softmax(1).gather(1, y[:, None]).squeeze(1),
                             self.choice["sal"])
        idx1, idx2 = self.pairs(out.features, y, ctx.generator)
        stats = {"msmix_sal": float(sal.detach()), "msmix_paired": len(idx1) / len(y)}
        if len(idx1):
            lam0 = torch.tensor([beta_sample(2.0, ctx.generator) for _ in range(len(idx1))], device=y.device)
            lams = sig_lambdas(intensity, idx1, idx2, lam0)
            mixed = {m: lams[m].to(z.dtype)[:, None] * z[idx1] + (1 - lams[m].to(z.dtype))[:, None] * z[idx2]
                     for m, z in out.features.items()}
            lam_y = torch.stack(list(lams.values())).mean(0).float()[:, None]
            target = lam_y * F.one_hot(y[idx1], out.logits.shape[1]) + (1 - lam_y) * F.one_hot(y[idx2], out.logits.shape[1])
            mixed_logits = model.classify(mixed)
            loss = loss + self.mix_weight * -(target * F.log_softmax(mixed_logits.float(), 1)).sum(1).mean()
            stats.update({f"msmix_lambda_{m}": float(lam.detach().mean()) for m, lam in lams.items()})
        loss = loss + self.sal_weight * sal
        self.stats.add(stats)
        return out, loss

    def log(self) -> dict[str, Any]:
        return self.stats.means()

    def state_dict(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict() if self.heads is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.heads is not None and state.get("heads") is not None:
            try:
                self.heads.load_state_dict(state["heads"])
            except RuntimeError:
                raise MmvidError("the checkpoint's MS-Mix intensity heads have another shape (saved before MS-Mix "
                                 "followed the reference's IntensityPredictor); start the run afresh") from None
