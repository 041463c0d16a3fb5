"""One optimisation step (:func:`train_step`), in the order the hooks of balancers and augmentations see it:

    data (``balancer.on_batch``) -> forward + loss (``augment.compute``, plus the auxiliary heads' term of
    ``model.aux_loss``) -> per ``balancer.passes`` item: ``balancer.loss`` -> backward (DDP all-reduce) ->
    unscale -> ``balancer.after_backward`` -> clip -> optimizer step

and the checks that stop a run whose loss, gradients or weights became non-finite, naming the epoch and step.
"""

from __future__ import annotations

import torch

from mmvid.augment.base import mixed_cross_entropy, modality_mix
from mmvid.data.torch_dataset import INTENSITY_KEY, check_finite_inputs
from mmvid.distributed.collectives import average_gradients
from mmvid.engine.context import TrainContext, TrainingParts
from mmvid.engine.loaders import to_device
from mmvid.engine.runtime import autocast
from mmvid.errors import MmvidError
from mmvid.models.classifier import MultimodalClassifier
from mmvid.registry import EpochMeans


class AuxiliaryLoss:
    """The auxiliary unimodal-head term of Remix's concat baseline (MatthewMaxy/Remix_ICML2025 ``baseline.py``,
    ``train_epoch``: loss = loss_av + alpha loss_a + beta loss_v, alpha = beta = 0.5, every step), ``model.aux_loss``:

        L_aux = sum_m w_m CE(h_m(z_m), y~_m)

    h_m = ``model.aux_heads[m]`` (a Linear, (B, d_m) -> (B, C)) on the step's feature z_m (``ModelOutput.features``:
    after calibration and any feature mixing, what the fusion sees; the reference's pooled encoder output), y~_m
    the target z_m was mixed towards (the plain label without mixing, or with fused-stage mixing; see
    :func:`mmvid.augment.base.modality_mix`). Gradients reach the encoders, as in the reference. ``log()`` gives
    the epoch means of each unweighted CE(h_m(z_m), y~_m) as ``aux_loss_<m>``."""

    def __init__(self, weights: dict[str, float]) -> None:
        self.weights = dict(weights)
        self.means = EpochMeans()

    def __call__(self, model: MultimodalClassifier, out, y: torch.Tensor) -> torch.Tensor:
        terms = {m: mixed_cross_entropy(model.aux_heads[m](out.features[m]), y, modality_mix(out.mix, m))
                 for m in self.weights}
        values = torch.stack([v.detach().float() for v in terms.values()]).tolist()  # one sync for all heads
        self.means.add({f"aux_loss_{m}": v for m, v in zip(terms, values)})
        return sum(self.weights[m] * v for m, v in terms.items())

    def log(self, reduce=None) -> dict[str, float]:
        """This epoch's means over every rank's steps (``reduce``: the sum across ranks, None in one process);
        then reset for the next epoch."""
        keys = [f"aux_loss_{m}" for m in self.weights]  # the same vector on every rank
        local = [self.means.sums.get(k, 0.0) for k in keys] + [self.means.n]
        self.means = EpochMeans()
        total = reduce(torch.tensor(local, dtype=torch.float64)).tolist() if reduce is not None else local
        return {k: v / total[-1] for k, v in zip(keys, total)} if total[-1] else {}


def train_step(training: TrainingParts, inputs: dict[str, torch.Tensor], y: torch.Tensor,
               group: tuple[int, int] = (0, 1)):
    """One optimisation step on a batch (any device): returns (ModelOutput, loss, y on the device).

    data -> forward + loss (autocast) -> backward (DDP all-reduce) -> unscale -> ``after_backward``
    -> clip -> step. Raises MmvidError naming the epoch and step when the loss, a gradient or a weight
    is not finite.

    ``group`` = (this batch's place i, the number n of batches) in its gradient-accumulation group
    (``optim.accumulate``; (0, 1) without): gradients are zeroed before the first, each batch's loss is
    backpropagated divided by n (the gradient of the group's mean loss), and the optimizer steps after the
    last. The returned loss is the batch's own, undivided.
    """
    ctx, balancer, cfg = training.ctx, training.balancer, training.ctx.cfg
    i, n = group
    inputs, y = to_device(inputs, ctx.device), y.to(ctx.device, non_blocking=True)
    ctx.batch_intensity = inputs.pop(INTENSITY_KEY, None)  # not a modality: for the augmentation (intensity targets)
    clean = inputs
    inputs, y = balancer.on_batch(inputs, y, ctx)  # data stage
    with autocast(ctx.device, cfg.amp):
        out, base = training.augment.compute(training.net, inputs, y, ctx)  # forward + augmentation's loss
        if training.aux is not None:  # the auxiliary heads' term of Remix's baseline (model.aux_loss; no balancer then)
            base = base + training.aux(ctx.model, out, y)
    losses = []
    for focus in balancer.passes(ctx):  # one pass, or several on this forward (e.g. one per modality)
        ctx.focus = focus
        with autocast(ctx.device, cfg.amp):
            loss = balancer.loss(base, out, inputs, y, ctx)  # loss stage
        if not torch.isfinite(loss):
            check_finite_inputs(clean, ctx.info.path, f" at epoch {ctx.epoch + 1}, step {ctx.step}")  # the cache first
            raise diverged(f"loss became {float(loss.detach())}", ctx)
        if i == 0:
            ctx.optimizer.zero_grad(set_to_none=True)
        ctx.scaler.scale(loss / n if n > 1 else loss).backward()  # DDP averages the model's gradients here
        losses.append(loss)
        if i < n - 1:
            continue  # accumulating: the group's last batch steps
        average_gradients(training.plugin_parameters(), ctx.world_size)
        ctx.scaler.unscale_(ctx.optimizer)  # gradients are true values from here on
        balancer.after_backward(ctx.model, out, y, ctx)  # optimisation stage
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(ctx.model.parameters(), cfg.optim.grad_clip)
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
        check_finite_step(training)
    ctx.focus = None
    ctx.step += 1
    loss = losses[0] if len(losses) == 1 else torch.stack([v.detach().float() for v in losses]).mean()
    return out, loss, y


def check_finite_step(training: TrainingParts) -> None:
    """Stop when a step left non-finite gradients or weights, whatever caused them. The loss check alone
    misses a finite loss whose step diverges (lr=inf: finite gradients, NaN weights), above all on a run's
    last step. Under fp16 loss scaling an inf gradient is expected (the scaler skipped that step)."""
    ctx = training.ctx
    params = [p for p in ctx.model.parameters()] + training.plugin_parameters()
    # Max-norms: finite exactly when every entry is (NaN propagates; no squares that could overflow); one sync.
    norms = {}
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if grads and not ctx.scaler.is_enabled():
        norms["gradients"] = torch.nn.utils.get_total_norm(grads, float("inf"))
    norms["weights"] = torch.nn.utils.get_total_norm([p.detach() for p in params], float("inf"))
    finite = torch.isfinite(torch.stack(list(norms.values()))).tolist()
    if not all(finite):
        what = " and ".join(k for k, ok in zip(norms, finite) if not ok)
        raise diverged(f"{what} became non-finite", ctx)


def diverged(what: str, ctx: TrainContext) -> MmvidError:
    """One line for a diverged step: what became non-finite, where, and the usual remedy."""
    return MmvidError(f"{what} at epoch {ctx.epoch + 1}, step {ctx.step}; lower optim.lr or try --amp off")

