"""mmvid's loggers (:data:`mmvid.tracking.base.LOGGERS`): ``tensorboard``, ``wandb`` and ``csv``.

Where each writes: tensorboard, ``<run>/tensorboard/`` (in a sweep, ``track.group`` set:
``<workspace>/sweeps/<group>/tensorboard/<run>/``, one folder per sweep for ``tensorboard --logdir``); wandb, its
files under ``<run>/wandb/`` (in a sweep, a W&B group named after it); csv, ``<run>/scalars.csv``. A fresh start
replaces what an earlier start of the same run folder logged; a resume drops what was logged after the
checkpoint's step and continues.
"""

from __future__ import annotations

import csv
import netrc
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmvid.errors import MmvidError
from mmvid.schema import spec
from mmvid.tracking.base import LOGGERS, Logger, RunInfo, flat_config
from mmvid.workspace import writable_dir, write_atomic


@LOGGERS.register("tensorboard")
class TensorBoardLogger(Logger):
    """TensorBoard event files: the step and epoch scalars, the resolved config as hyper-parameters (HPARAMS tab)
    and as text."""

    packages = ("tensorboard",)

    @dataclass
    class Settings:
        flush_secs: int = spec(30, ge=1, le=86400, help="seconds between two writes of the event file to disk")

    def __init__(self, settings: Any, run: RunInfo) -> None:
        super().__init__(settings, run)
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = tensorboard_dir(run)
        writable_dir(self.log_dir, "TensorBoard folder")
        if not run.resumed:  # a fresh start: this run folder's earlier curves would mix with the new ones
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        # A resume drops the events the interrupted process wrote after the checkpoint's step.
        self.writer = SummaryWriter(str(self.log_dir), flush_secs=settings.flush_secs,
                                    purge_step=run.step + 1 if run.resumed else None)

    def hyperparams(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        if self.run.resumed:
            return  # written at the start already
        # In this run's own event file (SummaryWriter.add_hparams would open a sub-run of its own).
        for summary in hparams(flat_config(config), {}):
            self.writer.file_writer.add_summary(summary)
        import yaml

        self.writer.add_text("config", "```\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)

    def log_step(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # an epoch's numbers are on disk when its metrics.jsonl line is

    def close(self) -> None:
        self.writer.close()


def tensorboard_dir(run: RunInfo) -> Path:
    """``<run>/tensorboard``; for a run of group G in a workspace's runs/: ``<workspace>/sweeps/G/tensorboard/<run>``
    (G and the run's name are plain names: the path stays inside the workspace)."""
    if run.group and run.workspace is not None:
        return run.workspace / "sweeps" / run.group / "tensorboard" / run.name
    return run.run_dir / "tensorboard"


WANDB_ID = "wandb-id"  # <run>/wandb/wandb-id: the W&B run id, so that a resume continues the same W&B run


@LOGGERS.register("wandb")
class WandbLogger(Logger):
    """Weights & Biases: the step and epoch scalars, the resolved config as the run's config, runs of a sweep in
    one group. Offline (files under ``<run>/wandb``, ``wandb sync`` uploads them) unless an API key is configured."""

    packages = ("wandb",)

    @dataclass
    class Settings:
        project: str = spec("mmvid", name=True, help="the W&B project")
        entity: str | None = spec(None, name=True, help="the W&B team or user (none: the key's default)")
        # auto: WANDB_MODE when set, else online when an API key is configured (WANDB_API_KEY or ~/.netrc),
        # else offline
        mode: str = spec("auto", choices=("auto", "online", "offline"), help="online | offline | auto")

    def __init__(self, settings: Any, run: RunInfo) -> None:
        super().__init__(settings, run)
        import wandb

        folder = writable_dir(run.run_dir / "wandb", "W&B folder")
        id_file = folder / WANDB_ID
        run_id = id_file.read_text().strip() if run.resumed and id_file.exists() else ""
        if not run_id.isalnum():  # a fresh start (or an id file mmvid did not write): a new W&B run
            run_id = secrets.token_hex(8)
            write_atomic(id_file, run_id + "\n")
        try:
            self.wb = wandb.init(project=settings.project, entity=settings.entity, group=run.group, name=run.name,
                                 id=run_id, resume="allow", dir=str(run.run_dir), config=run.config,
                                 mode=wandb_mode(settings.mode), settings=wandb.Settings(silent=True))
        except Exception as e:  # wandb's own errors (no key online, no network): one line
            raise MmvidError(f"--logger wandb could not start ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                             f"set track.args.wandb.mode=offline or configure a key with `wandb login`") from None
        self.wb.define_metric("epoch/*", step_metric="trainer/global_step")
        self.wb.define_metric("step/*", step_metric="trainer/global_step")

    def log_step(self, step: int, values: dict[str, float]) -> None:
        self.wb.log({**values, "trainer/global_step": step})

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.wb.log({**values, "trainer/global_step": step, "epoch": epoch})

    def close(self) -> None:
        self.wb.finish()


def wandb_mode(mode: str) -> str | None:
    """``auto``: WANDB_MODE when set (None: wandb reads it), else online with a key configured, else offline."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return None
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        host = netrc.netrc().authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        host = None
    return "online" if host else "offline"


CSV_FILE = "scalars.csv"
CSV_COLUMNS = ("step", "epoch", "tag", "value")


@LOGGERS.register("csv")
class CsvLogger(Logger):
    """``<run>/scalars.csv``: one row per scalar (step, epoch, tag, value), the tags of the other loggers; the
    config is the run's config.yaml."""

    def __init__(self, settings: Any, run: RunInfo) -> None:
        super().__init__(settings, run)
        self.path = run.run_dir / CSV_FILE
        keep: list[list[str]] = []
        if run.resumed and self.path.exists():  # the rows up to the checkpoint's step
            with self.path.open(newline="") as fh:
                rows = list(csv.reader(fh))[1:]
            keep = [r for r in rows if len(r) == len(CSV_COLUMNS) and r[0].isdigit() and int(r[0]) <= run.step]
        with self.path.open("w", newline="") as fh:
            csv.writer(fh).writerows([list(CSV_COLUMNS), *keep])
        self.fh = self.path.open("a", newline="")
        self.out = csv.writer(self.fh)
        self.epoch = None

    def log_step(self, step: int, values: dict[str, float]) -> None:
        epoch = int(values.get("step/epoch", 0))
        self.out.writerows([step, epoch, tag, repr(v)] for tag, v in values.items())

    def log_epoch(self, epoch: int, step: int, values: dict[str, float]) -> None:
        self.out.writerows([step, epoch, tag, repr(v)] for tag, v in values.items())
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()
