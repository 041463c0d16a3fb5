"""The training loop's side of experiment tracking (:mod:`mmvid.tracking`): the run's :class:`Tracker` started
with the resolved config (rank 0 only), and what one step gives it (the loss, the learning rate, the per-step
scalars of the augmentation, the balancer and the auxiliary heads)."""

from __future__ import annotations

from mmvid.engine.context import TrainingParts
from mmvid.tracking import Tracker


def start_tracker(training: TrainingParts, resumed: bool) -> Tracker:
    """The loggers of ``cfg.logger`` for this run (none on ranks other than 0). ``resumed``: continuing a
    checkpoint, whose step the loggers continue from (what was logged after it is dropped)."""
    ctx = training.ctx
    return Tracker.start(ctx.cfg, ctx.run_dir, ctx.rank, ctx.step, resumed)


def track_step(tracker: Tracker, training: TrainingParts, loss) -> None:
    """After :func:`mmvid.engine.step.train_step`: the step's mean loss, the first parameter group's learning rate
    and what the plug-ins' epoch statistics (``stats``: :class:`mmvid.registry.EpochMeans`) received at it."""
    if not tracker:
        return
    ctx = training.ctx
    sources = [getattr(training.augment, "stats", None), getattr(training.balancer, "stats", None),
               getattr(training.aux, "means", None)]
    tracker.step(ctx.step, ctx.epoch, loss.detach(), ctx.optimizer.param_groups[0]["lr"], sources)
