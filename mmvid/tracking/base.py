"""Experiment tracking: the :data:`LOGGERS` registry, the :class:`Logger` base class every logger derives from, the
check of a config's ``logger`` / ``track`` keys (:func:`check_loggers`), and :class:`Tracker`, which the training
loop calls at its named points (:mod:`mmvid.engine.loop`):

    start (the resolved config as hyper-parameters) -> after every ``track.every``-th step: ``step/loss``,
    ``step/lr`` and each plug-in's per-step scalars (``step/<name>``: what the augmentation's, the balancer's and the
    auxiliary heads' ``stats`` received at that step) -> after every epoch: the numbers of its metrics.jsonl line
    (``epoch/<key>``) -> close.

Every value is logged at the global step (the number of optimisation steps done, ``TrainContext.step``), so a
resumed run continues its curves and drops what the interrupted process logged after its checkpoint. metrics.jsonl
stays the record every mmvid command reads; loggers only mirror it. Only rank 0 logs (other ranks get a tracker
without loggers). Imports no torch, tensorboard or wandb: a logger imports its package when it starts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError
from mmvid.registry_base import NoSettings, Registry
from mmvid.schema import check_settings

LOGGERS: Registry = Registry("logger", "track.args")
NONE = "none"  # ``--logger none``: no logger (clears a recipe's)
EXTRA = "pip install 'mmvid[track]'"  # the optional extra with tensorboard and wandb


@dataclass
class RunInfo:
    """What a logger knows of the run it logs."""

    run_dir: Path  # the run folder (``<workspace>/runs/<name>``)
    name: str  # the run's name (its folder's)
    group: str | None  # ``track.group``: the runs logged together (``mmvid sweep`` gives its name)
    resumed: bool  # continuing a checkpoint (False: a fresh start, earlier logs of this run folder are replaced)
    step: int  # the global step the run starts from (0, or the checkpoint's)
    config: dict[str, Any]  # the resolved config (TrainConfig.to_dict())

    @property
    def workspace(self) -> Path | None:
        """The workspace of a run in its ``runs/`` folder, else None."""
        return self.run_dir.parent.parent if self.run_dir.parent.name == "runs" else None


class Logger:
    """A logger plug-in (``@LOGGERS.register("name")``). ``Settings``: its typed settings (``track.args.<name>``).
    ``packages``: the modules it needs (checked by :func:`check_loggers` before anything runs)."""

    Settings: type = NoSettings
    packages: tuple[str, ...] = ()

    def __init__(self, settings: Any, run: RunInfo) -> None:
        self.settings, self.run = settings, run

    def hyperparams(self, config: dict[str, Any]) -> None:
        """The resolved config, once at the start (nested sections; :func:`flat_config` for a flat view)."""

    def log_step(self, step: int, values: dict[str, float]) -> None:
        """Per-step scalars (``step/loss``, ``step/lr``, ``step/<plug-in scalar>``) at global step ``step``."""

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        """An epoch's metrics.jsonl numbers (``epoch/<key>``), at the global step of the epoch's end."""

    def close(self) -> None:
        """Flush and close (also after an error or Ctrl-C)."""


def flat_config(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``; lists, empty mappings and None as text (a
    hyper-parameter is a number, a string or a bool)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def epoch_scalars(rec: dict[str, Any], prefix: str = "epoch/", top: bool = True) -> dict[str, float]:
    """The numbers of a metrics.jsonl line (nested mappings as ``a/b``), but its epoch number."""
    out: dict[str, float] = {}
    for k, v in rec.items():
        if top and k == "epoch":
            continue
        if isinstance(v, dict):
            out.update(epoch_scalars(v, f"{prefix}{k}/", top=False))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out


def _nested(args: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``track.args`` with dotted keys (``--set track.args.wandb.project=x`` gives ``{"wandb.project": "x"}``)
    as one mapping per logger."""
    out: dict[str, dict[str, Any]] = {}
    for k, v in args.items():
        name, _, key = str(k).partition(".")
        if key:
            out.setdefault(name, {})[key] = v
        elif isinstance(v, dict):
            out.setdefault(name, {}).update(v)
        elif v is None:
            out.setdefault(name, {})
        else:
            raise MmvidError(f"config track.args.{name}={v!r} is not valid; it must be a mapping of logger "
                             f"{name!r}'s settings, e.g. track.args.{name}.KEY=VALUE")
    return out


def check_loggers(cfg: Any) -> None:
    """``cfg.logger`` (names of :data:`LOGGERS`; ``none`` alone: no logger) and ``cfg.track.args`` (each named
    logger's settings, checked and written back in full; settings of a logger not in use are checked too, so a
    misspelling is found), in place. A logger whose package is missing is one line naming the extra."""
    names = list(dict.fromkeys(cfg.logger))
    if NONE in names:
        if len(names) > 1:
            raise MmvidError(f"config logger={names}: 'none' turns logging off; give it alone or leave it out")
        names = []
    for name in names:
        LOGGERS.get(name)  # an unknown name: one line with the choices
    args = _nested(cfg.track.args if isinstance(cfg.track.args, dict) else {"": cfg.track.args})
    for name in args:
        if name not in LOGGERS:
            raise MmvidError(f"config track.args.{name}: {name!r} is no logger; choose one of: {', '.join(LOGGERS.names())}")
    full = {}
    for name in sorted(set(args) | set(names)):
        settings = check_settings(LOGGERS.settings(name), args.get(name, {}), f"logger {name!r}", f"track.args.{name}")
        full[name] = dataclasses.asdict(settings)
    for name in names:
        missing = [p for p in LOGGERS.get(name).packages if importlib.util.find_spec(p) is None]
        if missing:
            raise MmvidError(f"--logger {name} needs the {' and '.join(missing)} package ({EXTRA}); "
                             f"or leave --logger {name} out")
    cfg.logger, cfg.track.args = names, full


class Tracker:
    """The loggers of one run, called by the training loop at its named points: :meth:`step` after every
    optimisation step, :meth:`epoch` after every epoch's metrics.jsonl line, :meth:`close` at the end. A tracker
    without loggers (``logger`` empty, or a rank other than 0) does nothing and costs nothing."""

    def __init__(self, loggers: list[Logger], every: int = 1) -> None:
        self.loggers, self.every = loggers, every
        self._seen: dict[int, tuple[int, int]] = {}  # source index -> (id of its stats object, its count)

    @classmethod
    def start(cls, cfg: Any, run_dir: Path, rank: int = 0, step: int = 0, resumed: bool = False) -> "Tracker":
        """The loggers ``cfg.logger`` names, started (rank 0 only), each given the resolved config."""
        if rank != 0 or not cfg.logger:
            return cls([])
        config = cfg.to_dict()
        run = RunInfo(Path(run_dir), Path(run_dir).name, cfg.track.group, resumed, step, config)
        loggers: list[Logger] = []
        try:
            for name in cfg.logger:
                settings = check_settings(LOGGERS.settings(name), cfg.track.args.get(name, {}), f"logger {name!r}",
                                          f"track.args.{name}")
                loggers.append(LOGGERS.build(name, settings, run))
                loggers[-1].hyperparams(config)
        except BaseException:
            for lg in loggers:
                lg.close()
            raise
        return cls(loggers, cfg.track.every)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def step(self, step: int, epoch: int, loss: Any, lr: float, sources: list[Any] = ()) -> None:
        """After global step ``step`` (1 after the first): its ``loss`` (a number or a 0-d tensor), the learning
        rate and what each of ``sources`` (objects with ``stats``-like ``last`` / ``n``: the plug-ins'
        :class:`mmvid.registry.EpochMeans`) received at this step. Every ``track.every``-th step is logged."""
        if not self.loggers:
            return
        fresh = {}
        for i, src in enumerate(sources):  # a source that received values since the last call: those values
            if src is None:
                continue
            mark = (id(src), getattr(src, "n", 0))
            if self._seen.get(i) != mark:
                self._seen[i] = mark
                fresh.update(getattr(src, "last", {}))
        if step % self.every:
            return
        values = {"step/loss": float(loss), "step/lr": float(lr), "step/epoch": float(epoch)}
        values.update({f"step/{k}": float(v) for k, v in fresh.items()})
        for lg in self.loggers:
            lg.log_step(step, values)

    def epoch(self, rec: dict[str, Any], step: int) -> None:
        """After an epoch: the numbers of its metrics.jsonl line ``rec`` at global step ``step``."""
        if not self.loggers:
            return
        values = epoch_scalars(rec)
        for lg in self.loggers:
            lg.log_epoch(int(rec.get("epoch", 0)), step, values)

    def close(self) -> None:
        for lg in self.loggers:
            lg.close()
        self.loggers = []

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
