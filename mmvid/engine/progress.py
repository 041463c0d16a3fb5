"""Where a run is and how it stops: the running totals of an epoch (:class:`EpochTotals`, also what a checkpoint
saved by Ctrl-C inside an epoch holds), the progress bars (:class:`ProgressBars`), and Ctrl-C as a request to
stop between two steps (:class:`StopRequest`)."""

from __future__ import annotations

import signal
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


@dataclass
class EpochTotals:
    """This rank's position in the current epoch: batches done, and the sums the epoch's train_loss and
    train_acc_batch are computed from. A checkpoint saved inside an epoch holds it as ``partial``."""

    batch: int = 0
    loss_sum: float = 0.0  # sum over samples of the step's loss
    hits: int = 0  # samples whose fused prediction was right
    seen: int = 0  # samples

    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Count one step: its (mean) loss, its fused ``logits`` (B, C) and labels ``y`` (B,)."""
        self.batch += 1
        self.loss_sum += float(loss.detach()) * len(y)
        self.hits += int((logits.argmax(1) == y).sum())
        self.seen += len(y)

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint's ``partial``: {"batch", "loss_sum", "hits", "seen"}."""
        return asdict(self)


class ProgressBars:
    """The bar of epochs and the bar of the current epoch's steps (rich), shown when ``show`` (rank 0 of a run
    started with progress on)."""

    def __init__(self, epochs: int, start_epoch: int, show: bool) -> None:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        self.bar = Progress(*columns, disable=not show)
        self.epochs, self.first_epoch = epochs, start_epoch
        self.steps_task = None

    def __enter__(self) -> "ProgressBars":
        self.bar.__enter__()
        self.epochs_task = self.bar.add_task("epochs", total=self.epochs, completed=self.first_epoch, info="")
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def start_epoch(self, epoch: int, steps: int, done: int) -> None:
        """Epoch ``epoch`` (0-based) of ``steps`` steps, ``done`` of them before a resume."""
        self.steps_task = self.bar.add_task(f"epoch {epoch + 1}", total=steps, completed=done, info="")

    def step(self, totals: EpochTotals) -> None:
        self.bar.update(self.steps_task, advance=1, info=f"loss {totals.loss_sum / totals.seen:.3f}")

    def end_steps(self) -> None:
        self.bar.remove_task(self.steps_task)

    def end_epoch(self, rec: dict[str, Any]) -> None:
        """One more epoch done; its val and test accuracy (metrics.jsonl's line ``rec``) beside the bar."""
        self.bar.update(self.epochs_task, advance=1,
                        info=" ".join(f"{k} {rec[f'{k}_acc']:.3f}" for k in ("val", "test") if f"{k}_acc" in rec))


class StopRequest:
    """Ctrl-C as a request: the first SIGINT sets a flag that the loop checks between
    steps, so the checkpoint it then writes is of a consistent state; a second Ctrl-C more than two
    seconds later interrupts at once. In DDP the flag is all-reduced so every rank stops at the same step.
    """

    def __init__(self) -> None:
        self.flag = False
        self._first = 0.0
        self._old: dict[int, Any] = {}

    def _handler(self, signum, frame) -> None:
        if self.flag and time.monotonic() - self._first > 2.0:
            raise KeyboardInterrupt
        if not self.flag:
            self.flag, self._first = True, time.monotonic()

    def __enter__(self) -> "StopRequest":
        # SIGINT only: SIGTERM must keep killing, it is how a failed rank's peers are stopped.
        for sig in (signal.SIGINT,):
            try:
                self._old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: no handler, Ctrl-C behaves as usual
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, all_reduce=None) -> bool:
        if all_reduce is None:
            return self.flag
        return bool(all_reduce(torch.tensor([float(self.flag)], dtype=torch.float64))[0] > 0)
