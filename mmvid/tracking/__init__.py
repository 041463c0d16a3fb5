"""Experiment tracking (``--logger tensorboard|wandb|csv|none``): the :data:`LOGGERS` registry, its base class and
the :class:`Tracker` the training loop calls (:mod:`mmvid.tracking.base`); mmvid's loggers are in
:mod:`mmvid.tracking.loggers`, imported here so that they are registered."""

from mmvid.tracking import loggers  # noqa: F401  (registers tensorboard, wandb, csv)
from mmvid.tracking.base import LOGGERS, Logger, RunInfo, Tracker, check_loggers

__all__ = ["LOGGERS", "Logger", "RunInfo", "Tracker", "check_loggers"]
