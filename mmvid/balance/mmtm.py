"""The MMTM fusion (Joze et al. 2020) that the Greedy balancer steers, as the balanced MMTM network of Wu et
al. (2022) (reference: nyukat/greedy_multimodal_learning, ``src/model.py`` ``MMTM_MVCNN`` and
``src/balanced_mmtm.py`` ``MMTM_mitigate``), registered as fusion ``mmtm`` by this module.

The fusion runs the encoders itself (its blocks sit between encoder stages: :meth:`MMTMFusion.encode`, the
classifier's hook for such a fusion). What Greedy steers is its explicit interface, all on
:class:`MMTMFusion`:

* :attr:`MMTMFusion.care`: the modality whose excitations are replaced by their running averages in the
  training forwards that follow (None: none); no effect in eval mode;
* :attr:`MMTMFusion.average_source`: which modality's excitation feeds each running average (``own`` or
  ``first``, every block);
* :meth:`MMTMFusion.excitations` and :meth:`MMTMFusion.update_averages`: a forward's excitations, read from its
  ``ModelOutput.extras``, and the running averages' update with (rank-averaged) batch means;
* :meth:`MMTMFusion.bypass_parameters`: the parameters of one modality's MMTM bypass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.models.encoders import NUM_STAGES, stage_channels
from mmvid.models.fusions import DecisionFusion, check_two_plus
from mmvid.registry import FUSIONS
from mmvid.schema import spec

AVERAGE_SOURCES = ("own", "first")


class MMTMBlock(nn.Module):
    """One multimodal transfer module between encoder stages, as the balanced MMTM of Wu et al. (2022)
    (reference: nyukat/greedy_multimodal_learning, ``src/balanced_mmtm.py``, ``MMTM_mitigate``):

        s_m = mean over (T, H, W) of modality m's maps (B, C_m);  u = ReLU(W_s [s_a; s_v; ...] + b_s)
        e_m = sigmoid(W_m u + b_m) (B, C_m);  out_m = e_m * maps_m (broadcast over T, H, W)

    with W_s: sum C_m -> int(2 sum C_m / ratio). In a re-balancing step (``care`` = m) modality m's
    excitation is replaced by its running average *including this batch*, ē_m' = (mean_B e_m + n ē_m) / (n + 1),
    as the reference updates the average before using it; forward leaves the buffers alone: the greedy
    balancer commits the same update with :meth:`update` after the step.
    """

    def __init__(self, channels: dict[str, int], ratio: float = 4) -> None:
        super().__init__()
        self.channels = dict(channels)
        dim = sum(channels.values())
        hidden = int(2 * dim / ratio)
        self.squeeze = nn.Linear(dim, hidden)
        self.excite = nn.ModuleDict({m: nn.Linear(hidden, c) for m, c in channels.items()})
        for m, c in channels.items():
            self.register_buffer(f"running_{m}", torch.zeros(c))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        # Modality whose excitation feeds m's running average: m itself, or the first modality for all
        # (``average_source = "first"``, what the reference code does; set through MMTMFusion.average_source).
        self.average_source = "own"

    def source(self, m: str) -> str:
        return next(iter(self.channels)) if self.average_source == "first" else m

    def excitations(self, squeezed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """m -> e_m (B, C_m) in (0, 1) from the squeezed (B, C_m) maps of every modality."""
        u = torch.relu(self.squeeze(torch.cat([squeezed[m] for m in self.channels], dim=1)))
        return {m: torch.sigmoid(self.excite[m](u)) for m in self.channels}

    def averaged(self, e: dict[str, torch.Tensor], m: str) -> torch.Tensor:
        """(C_m,) running average of m's excitation with this batch's mean counted in (no gradient)."""
        n = self.count.to(e[m].dtype)
        return ((e[self.source(m)].detach().mean(0) + getattr(self, f"running_{m}") * n) / (n + 1)).to(e[m].dtype)

    def forward(self, maps: dict[str, torch.Tensor], frames: dict[str, int], care: str | None = None):
        """maps: m -> (B * T_m, C_m, H, W); returns (rescaled maps, m -> e_m (B, C_m) before any replacement)."""
        squeezed = {m: x.mean((2, 3)).view(-1, frames[m], x.shape[1]).mean(1) for m, x in maps.items()}
        e = self.excitations(squeezed)
        out = {}
        for m, x in maps.items():
            scale = self.averaged(e, m).expand_as(e[m]) if m == care else e[m]
            out[m] = x * scale.repeat_interleave(frames[m], 0)[:, :, None, None]
        return out, e

    @torch.no_grad()
    def update(self, batch_means: dict[str, torch.Tensor]) -> None:
        """Running averages ē_m <- (mean_B e_m + n ē_m) / (n + 1), n <- n + 1 (the reference's cumulative mean)."""
        n = self.count.float()
        for m in self.channels:
            buf = getattr(self, f"running_{m}")
            buf.copy_((batch_means[self.source(m)].to(buf) + buf * n) / (n + 1))
        self.count += 1


@FUSIONS.register("mmtm", doc="MMTM blocks between encoder stages 2-4, then per-modality heads (needed by greedy).")
class MMTMFusion(DecisionFusion):
    """Multimodal transfer modules (Joze et al. 2020) between encoder stages, as the balanced MMTM
    network of Wu et al. (2022) (reference: ``src/model.py``, ``MMTM_MVCNN``): one :class:`MMTMBlock`
    after each stage in ``positions`` (1-based, default 2, 3, 4 = after ResNet-18's layer2, layer3 and
    layer4; the small encoder's stages likewise), then, as the reference, one linear head per
    modality whose logits are averaged (h = [z_a; z_v] (B, sum d_m), see :class:`DecisionFusion`).

    The classifier runs the encoders through :meth:`encode`. The interface a balancer steers (Greedy, see the
    module's docstring): :attr:`care`, :attr:`average_source`, :meth:`excitations`, :meth:`update_averages`
    and :meth:`bypass_parameters`; nothing else of the blocks is written from outside.
    """

    split_head = False  # per-modality heads, but on features the blocks have already mixed

    @dataclass
    class Settings:
        positions: list[int] = spec(factory=lambda: [2, 3, 4], choices=tuple(range(1, NUM_STAGES + 1)),
                                    help="encoder stages (1-based) followed by an MMTM block",
                                    ref="greedy_multimodal_learning src/model.py MMTM_MVCNN (after layers 2-4)")
        ratio: float = spec(4.0, gt=0.0, le=1024.0, help="squeeze width int(2 sum C_m / ratio)",
                            ref="greedy_multimodal_learning src/balanced_mmtm.py (MMTM_mitigate)")

    def __init__(self, dims: dict[str, int], positions: list[int] | tuple[int, ...] = (2, 3, 4), ratio: float = 4) -> None:
        super().__init__(dims)
        check_two_plus("mmtm", dims)
        self.positions = sorted(int(p) for p in positions)
        if not self.positions or not all(1 <= p <= NUM_STAGES for p in self.positions):
            raise MmvidError(f"model.fusion_args.positions={list(positions)} must name encoder stages 1..{NUM_STAGES}")
        chans = {m: stage_channels(d) for m, d in dims.items()}
        self.blocks = nn.ModuleDict({str(p): MMTMBlock({m: c[p - 1] for m, c in chans.items()}, ratio)
                                     for p in self.positions})
        self._care: str | None = None

    @property
    def care(self) -> str | None:
        """The modality whose excitation is replaced by its running average in every block, in the training
        forwards until it is set again (None: none; set before a re-balancing step). No effect in eval mode."""
        return self._care

    @care.setter
    def care(self, modality: str | None) -> None:
        if modality is not None and modality not in self.dims:
            raise ValueError(f"MMTMFusion.care: {modality!r} is not one of the modalities {self.modalities}")
        self._care = modality

    @property
    def average_source(self) -> str:
        """Whose excitation feeds modality m's running average, in every block: ``own`` (m's) or ``first`` (the
        first modality's, as the reference code; equal channels needed)."""
        return next(iter(self.blocks.values())).average_source

    @average_source.setter
    def average_source(self, source: str) -> None:
        if source not in AVERAGE_SOURCES:
            raise ValueError(f"MMTMFusion.average_source: {source!r} is not one of {list(AVERAGE_SOURCES)}")
        for block in self.blocks.values():
            block.average_source = source

    def excitations(self, extras: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """A forward's excitations before any replacement, from its ``ModelOutput.extras``: block position
        (``"2"``, ...) -> m -> e_m (B, C_m)."""
        return {p: {m: extras[f"mmtm{p}_{m}"] for m in self.modalities} for p in self.blocks}

    @torch.no_grad()
    def update_averages(self, batch_means: dict[str, dict[str, torch.Tensor]]) -> None:
        """Every block's running averages with its batch means (block position -> m -> mean_B e_m (C_m,)):
        :meth:`MMTMBlock.update`."""
        for p, block in self.blocks.items():
            block.update(batch_means[p])

    def bypass_parameters(self, m: str) -> list[nn.Parameter]:
        """The parameters of modality m's MMTM bypass, as the reference groups them by name: every block's shared
        squeeze layer and its excitation layer for m."""
        return [p for block in self.blocks.values() for p in [*block.squeeze.parameters(), *block.excite[m].parameters()]]

    def encode(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor], tokens: bool = False):
        """Run every encoder stage by stage with the MMTM blocks in between: (features m -> (B, d_m),
        tokens m -> (B, N_m, d_m) when asked for (else None), extras ``mmtm{p}_{m}`` -> excitation e_m
        (B, C_m) of block p before any replacement)."""
        care = self.care if self.training else None
        maps, frames = {}, {}
        for m in self.modalities:
            maps[m], frames[m] = encoders[m].frames(inputs[m])
        extras = {}
        for i in range(NUM_STAGES):
            maps = {m: encoders[m].run_stage(i, x) for m, x in maps.items()}
            block = self.blocks[str(i + 1)] if str(i + 1) in self.blocks else None
            if block is not None:
                maps, e = block(maps, frames, care)
                extras.update({f"mmtm{i + 1}_{m}": v for m, v in e.items()})
        if tokens:
            toks = {m: encoders[m].map_tokens(x, frames[m], inputs[m].dim() == 5) for m, x in maps.items()}
            return {m: v.mean(1) for m, v in toks.items()}, toks, extras
        return {m: encoders[m].pool(x, frames[m]) for m, x in maps.items()}, None, extras


