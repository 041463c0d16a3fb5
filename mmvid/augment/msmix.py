"""MS-Mix (seed 004, Zhu et al.; reference HongyuZhu-s/MS-Mix, ``models/MS_MIX.py`` function ``MS_Mix`` and the
loss of ``trains/ALMT.py``), adapted from regression sentiment analysis to classification.

Three parts, on the per-modality features z_m (B, d_m) of one batch:

* SASS, sample selection: S = mean_m cos(z_m,i, z_m,j), diagonal zeroed, min-max normalised over the
  off-diagonal entries (0.5 everywhere when they are all equal). ``pairing: reference``: the candidates are
  every ordered pair (i, j) with S_ij > tau; with fewer than B of them, the 2B most similar pairs i < j
  instead; B pairs are drawn at random from the candidates (a sample may be drawn twice or not at all).
  ``pairing: anchor`` (mmvid's earlier form): every i gets one random partner above tau, else its most
  similar one. Classification adds ``augment.args.groups`` ({group: [class names]}, e.g. CREMA-D valence):
  i and j may be mixed only when their classes share a group; a class may be in several groups (CREMA-D's
  NEU, which contradicts no emotion) and must be in at least one. Without groups every class is compatible,
  as in the reference, which has no such check.
* SIG, intensity-guided ratios: I_m = 3 tanh(Linear(mean_N LayerNorm(x + MHSA_4(x)))) (B,) for the input x =
  the modality's pooled feature as one token (``intensity_input: feature``, the default: what the reference's
  ``MS_Mix`` receives, (B, d)), or its token sequence (``tokens``, N frames / time steps: a correction of the
  reference, whose predictor on (B, N, d) adds x.unsqueeze(1) and so broadcasts every sample's residual
  across the batch, (B, B, N, d) averaged over the batch axis); w_m = min-max of |I_m| over the batch; per
  pair lambda0 ~ Beta(2, 2) and lambda_m = (lambda0 + (w_m,i + e) / (w_m,i + w_m,j + 2e)) / 2, e = 1e-8, the
  weight of sample i (not detached: the mixed loss trains the intensity heads too, as in the reference);
  mixed z_m = lambda_m z_m,i + (1 - lambda_m) z_m,j; label weight lambda_y = mean_m lambda_m.
* SAL, alignment (``sal: reference``): 1000 sum_m KL_batchmean(t || q_m), q_m = softmax_batch(|I_m| / 3) + e,
  t = softmax_batch(s) + e, s (B,) in [0, 1] the ground-truth intensity as in the reference (|y| / 3 there).
  ``sal_target: labels`` (default): s = the clip's intensity target from the cache's levels (CREMA-D:
  mmvid.data.sources.cremad.CREMAD_INTENSITY); a cache without levels falls back, with a note, to
  ``sal_target: confidence``: s = the detached true-class probability of the fused model.
  ``sal: mean_kl`` (mmvid's earlier form): mean_m KL(s / sum s || softmax_batch(|I_m| / 3)).

Loss = CE(original) + ``mix_weight`` (0.7) CE(mixed, soft target) + ``sal_weight`` (0.5) SAL; the mixed
samples go through the same fusion and head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmvid.augment.base import Augmentation, beta_sample
from mmvid.errors import MmvidError
from mmvid.registry import AUGMENTS
from mmvid.schema import spec

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


def check_groups(groups: Any) -> None:
    """``augment.args.groups`` is a mapping of group names to lists of class names (one line otherwise)."""
    if groups is None:
        return
    if not isinstance(groups, dict) or not all(isinstance(v, list) and all(isinstance(c, str) for c in v)
                                               for v in groups.values()):
        raise MmvidError(f"augment.args.groups={groups!r} is not valid for msmix; map each group name to a list of "
                         f"class names, e.g. {{negative: [SAD, ANG], positive: [HAP]}}")


def label_groups(groups: dict[str, list[str]] | None, class_names: list[str]) -> torch.Tensor | None:
    """(C, C) bool: classes c and d may be mixed (they share a group of ``{group: [class names]}``); None
    without groups (every pair compatible). Every class must be in some group: a class left out would
    silently pair only with itself."""
    if not groups:
        return None
    check_groups(groups)
    member = torch.zeros(len(groups), len(class_names), dtype=torch.bool)
    for g, (name, members) in enumerate(groups.items()):
        for c in members:
            if c not in class_names:
                raise MmvidError(f"augment.args.groups.{name} names class {c!r}, which the cache does not have; "
                                 f"classes: {', '.join(class_names)}")
            member[g, class_names.index(c)] = True
    missing = [c for k, c in enumerate(class_names) if not member[:, k].any()]
    if missing:
        raise MmvidError(f"augment.args.groups leaves out class {', '.join(missing)}: put every class in a group "
                         f"(a group of its own if it may only pair with itself, e.g. groups.{missing[0]}: [{missing[0]}])")
    return (member.T.float() @ member.float()) > 0


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


def _compatible(y: torch.Tensor, compat_classes: torch.Tensor | None) -> torch.Tensor:
    """(B, B) bool: i and j may be mixed (their classes share a label group; never i with itself)."""
    if compat_classes is None:
        compat = torch.ones(len(y), len(y), dtype=torch.bool, device=y.device)
    else:
        c = compat_classes.to(y.device)
        compat = c[y][:, y].clone()
    return compat.fill_diagonal_(False)


def select_pairs(sim: torch.Tensor, y: torch.Tensor, compat_classes: torch.Tensor | None, tau: float,
                 gen: torch.Generator, num_mix: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SASS as the reference draws it: (idx1, idx2), each (K,), K = min(num_mix or B, candidates).

    Candidates: ordered pairs with S > tau (row-major); fewer than ``num_mix``: the 2 num_mix most similar
    pairs i < j (descending). K of them drawn without replacement by a permutation of the candidates."""
    b = len(y)
    num_mix = b if num_mix is None else num_mix
    compat = _compatible(y, compat_classes)
    pairs = torch.nonzero(compat & (sim > tau))
    if len(pairs) < num_mix:
        upper = compat & torch.ones_like(compat).triu(1)
        flat = torch.where(upper, sim, torch.full_like(sim, -float("inf"))).flatten()
        top = flat.topk(min(2 * num_mix, int(upper.sum()))).indices
        pairs = torch.stack([top // b, top % b], 1)
    pick = torch.randperm(len(pairs), generator=gen)[:num_mix].to(pairs.device)
    return pairs[pick, 0], pairs[pick, 1]


def select_partners(sim: torch.Tensor, y: torch.Tensor, compat_classes: torch.Tensor | None, tau: float,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """SASS, ``pairing: anchor``: (perm (B,), valid (B,) bool). Partners share a label group; random among
    S > tau, else the most similar compatible sample; ``valid`` is False where no compatible partner exists."""
    b = len(y)
    compat = _compatible(y, compat_classes)
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


@AUGMENTS.register("msmix")
class MSMix(Augmentation):
    """MS-Mix: label-aware pairing (SASS), per-modality intensity ratios (SIG) and the KL alignment loss (SAL).
    ``augment.args``: tau (0.4), mix_weight (0.7), sal_weight (0.5), groups ({group: [class names]}),
    pairing (reference | anchor), sal (reference | mean_kl), intensity_input (feature | tokens),
    sal_target (labels | confidence)."""

    @dataclass
    class Settings:
        tau: float = spec(0.4, ge=0.0, le=1.0, help="SASS: pairs with normalised similarity above tau are candidates",
                          ref="MS-Mix models/MS_MIX.py MS_Mix")
        mix_weight: float = spec(0.7, ge=0.0, le=1000.0, help="weight of the mixed samples' cross-entropy",
                                 ref="MS-Mix trains/ALMT.py loss")
        sal_weight: float = spec(0.5, ge=0.0, le=1000.0, help="weight of the SAL alignment loss",
                                 ref="MS-Mix trains/ALMT.py loss")
        groups: dict[str, list[str]] | None = spec(None, help="label groups {group: [class names]}: mix only within a group "
                                                   "(mmvid's addition for classification)")
        pairing: str = spec("reference", choices=("reference", "anchor"),
                            help="SASS draws B pairs above tau (reference) or a partner per sample (anchor)",
                            ref="MS-Mix models/MS_MIX.py MS_Mix (reference)")
        sal: str = spec("reference", choices=("reference", "mean_kl"),
                        help="SAL as the reference (1000 sum of batch KLs) or mmvid's earlier mean KL",
                        ref="MS-Mix compute_kl_loss (reference)")
        intensity_input: str = spec("feature", choices=("feature", "tokens"),
                                    help="intensity heads on the pooled feature (reference) or the token sequence",
                                    ref="MS-Mix IntensityPredictor input (feature)")
        sal_target: str = spec("labels", choices=("labels", "confidence"),
                               help="SAL aligns with the cache's intensity levels or the true-class confidence",
                               ref="MS-Mix trains/ALMT.py ground-truth intensity (labels)")

    def __init__(self, cfg, modalities: list[str]) -> None:
        super().__init__(cfg, modalities)
        s = self.settings
        self.tau, self.mix_weight, self.sal_weight = s.tau, s.mix_weight, s.sal_weight
        self.groups = s.groups
        check_groups(self.groups)
        self.heads: nn.ModuleDict | None = None
        self.compat: torch.Tensor | None = None
        self.sal_from = self.settings.sal_target  # what SAL aligns with in this run (after setup's fallback)
        self.notes: list[str] = []

    def setup(self, model, ctx) -> nn.Module:
        net = getattr(model, "module", model)  # DDP wrapper or the classifier
        self.heads = nn.ModuleDict({m: IntensityHead(net.encoders[m].output_dim) for m in self.modalities})
        self.compat = label_groups(self.groups, list(ctx.info.class_names))
        self.sal_from, self.notes = self.settings.sal_target, []
        if self.sal_from == "labels" and getattr(ctx.info, "intensity", None) is None:
            path = getattr(ctx.info, "path", None)
            self.notes = [f"the cache{' ' + path.name if path is not None else ''} has no intensity levels (CREMA-D caches "
                          f"prepared by this version of mmvid have them; `mmvid prepare cremad --force` rebuilds an older one): "
                          f"MS-Mix's SAL aligns with the model's true-class confidence (augment.args.sal_target=confidence)"]
            self.sal_from = "confidence"
        self.needs_intensity = self.sal_from == "labels"
        return self.heads


    def pairs(self, feats: dict[str, torch.Tensor], y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        sim = similarity(feats)
        if self.settings.pairing == "reference":
            return select_pairs(sim, y, self.compat, self.tau, gen)
        perm, valid = select_partners(sim, y, self.compat, self.tau, gen)
        return torch.arange(len(y), device=y.device)[valid], perm[valid]

    def sal_target(self, out, y: torch.Tensor, ctx) -> torch.Tensor:
        """(B,) s in [0, 1]: the batch's intensity targets (``labels``), else the detached true-class probability."""
        if self.sal_from == "labels":
            s = getattr(ctx, "batch_intensity", None)
            if s is None or len(s) != len(y):
                raise MmvidError("MS-Mix reads intensity labels but the batch carries none; build the training "
                                 "loader with the cache's levels (engine.make_loader(intensity=True))")
            return s.to(y.device).float()
        return out.logits.detach().float().softmax(1).gather(1, y[:, None]).squeeze(1)

    def compute(self, model, inputs, y, ctx):
        if self.heads is None:
            raise MmvidError("augment msmix was used before setup(model, ctx); the engine calls it after building the model")
        tokens = self.settings.intensity_input == "tokens"
        out = model(inputs, tokens=tokens)
        loss = F.cross_entropy(out.logits.float(), y)
        src = out.tokens if tokens else {m: z[:, None] for m, z in out.features.items()}  # (B, 1, d): one token
        intensity = {m: self.heads[m](src[m]) for m in self.modalities}
        sal = alignment_loss(intensity, self.sal_target(out, y, ctx), self.settings.sal)
        idx1, idx2 = self.pairs(out.features, y, ctx.generator)
        stats = {"msmix_sal": float(sal.detach()), "msmix_paired": len(idx1) / len(y),
                 "msmix_sal_labels": float(self.sal_from == "labels")}
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


    def state_dict(self) -> dict[str, Any]:
        return {"heads": self.heads.state_dict() if self.heads is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.heads is not None and state.get("heads") is not None:
            try:
                self.heads.load_state_dict(state["heads"])
            except RuntimeError:
                raise MmvidError("the checkpoint's MS-Mix intensity heads have another shape (saved before MS-Mix "
                                 "followed the reference's IntensityPredictor); start the run afresh") from None
