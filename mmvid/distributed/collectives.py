"""What the training loop and the plug-ins call inside a process group (DDP); each is the identity, or does
nothing, in one process (``world_size`` 1).

Sums, broadcasts and gathers across ranks, the gradient averaging of modules DDP does not wrap, rank 0's
buffers, the DDP wrapper, and the sampler: every rank's share of an epoch's order (:func:`shard_order`,
as DistributedSampler cuts it) and :class:`ResumableSampler`, which can skip what an interrupted epoch did.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def all_reduce_sum(t: torch.Tensor, world_size: int, device: torch.device) -> torch.Tensor:
    """``t`` summed across ranks, on the CPU (``t`` itself in one process). The sum runs on ``device``, the
    rank's own GPU under NCCL."""
    if world_size > 1:
        t = t.to(device)
        dist.all_reduce(t)
        t = t.cpu()
    return t


def broadcast_object(obj: Any, world_size: int) -> Any:
    """Rank 0's ``obj`` on every rank (identity in one process)."""
    if world_size <= 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any, world_size: int) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` in one process)."""
    if world_size <= 1:
        return [obj]
    out: list[Any] = [None] * world_size
    dist.all_gather_object(out, obj)
    return out


def average_gradients(params, world_size: int) -> None:
    """All-reduce-mean the gradients of modules that DDP does not wrap (a balancer's extra heads).

    A missing gradient counts as zero so that every rank joins the same collectives.
    """
    if world_size <= 1:
        return
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad.div_(world_size)


def sync_buffers(model: torch.nn.Module, world_size: int) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each rank updates from its own batches)."""
    if world_size <= 1:
        return
    for b in model.buffers():
        dist.broadcast(b, src=0)


class DDP(torch.nn.parallel.DistributedDataParallel):
    """DistributedDataParallel whose unknown attributes fall through to the wrapped model, so the
    training step can call ``net.unimodal_logits`` or read ``net.modalities`` as on the bare model."""

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


def shard_order(order: list[int], rank: int, world_size: int) -> list[int]:
    """Rank's share of an epoch's order, as DistributedSampler cuts it (no drop_last): the order is
    padded by repeating its start to a multiple of ``world_size``, then every ``world_size``-th entry."""
    total = -(-len(order) // world_size) * world_size
    padded = (order * -(-total // max(len(order), 1)))[:total]
    return padded[rank:total:world_size]


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (shuffled by ``seed + epoch``, so the order is the same after a resume)
    that can skip the batches an interrupted epoch already did.

    With one process the order is the same permutation, so a 1-process run with batch ``W * b``
    sees the same global batches as a W-process run with ``b`` per rank.
    """

    def __init__(self, n: int, world_size: int, rank: int, seed: int, reorder=None) -> None:
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.skip = 0  # samples of this rank to skip, once
        self.reorder = reorder  # the epoch's whole shuffled order -> a reordering of it (Balancer.epoch_order)
        self.order: list[int] | None = None  # the epoch's whole order, fixed by set_epoch

    def set_epoch(self, epoch: int) -> None:
        """Fix the epoch's order now (the loop calls this after the balancer's ``on_epoch_start``), so that
        ``len`` counts an order that ``epoch_order`` lengthened (Valuate's resampled copies)."""
        super().set_epoch(epoch)
        self.order = self._whole_order()

    def _whole_order(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)  # DistributedSampler's own permutation
        order = torch.randperm(len(self.dataset), generator=g).tolist()
        return order if self.reorder is None else list(self.reorder(order))

    def __iter__(self):
        order = self.order if self.order is not None else self._whole_order()
        indices = shard_order(order, self.rank, self.num_replicas)[self.skip:]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        n = self.num_samples if self.order is None else -(-len(self.order) // self.num_replicas)
        return n - self.skip
