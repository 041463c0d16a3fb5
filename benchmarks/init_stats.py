"""Initial weight statistics of the paper's ResNet-18 network under each ``model.init``, next to the rule the
reference code draws from (docs/methods.md, "Initialisation and the baseline's loss"). Not a test (the tests are
tests/reference/test_baseline_reference.py); run it by hand:

    python -m benchmarks.init_stats                 # concat, seed 0
    python -m benchmarks.init_stats --fusion sum --seed 3

The last column is OGM-GE's rule: conv kaiming-normal fan_out, std sqrt(2 / (C_out k_h k_w)); Linear
xavier-normal, std sqrt(2 / (fan_in + fan_out)), bias 0; BN weight 1. PyTorch's default conv / Linear weight
has std 1 / sqrt(3 fan_in) and its bias is U(-1/sqrt(fan_in), 1/sqrt(fan_in)); ``remix`` draws BN weights
from N(1, 0.02).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from mmvid.config import INITS
from mmvid.models.classifier import MultimodalClassifier


def rule(m: nn.Module) -> str:
    """The weight's std under OGM-GE's rule (BN: the constant 1)."""
    w = m.weight
    if isinstance(m, nn.BatchNorm2d):
        return "1"
    if isinstance(m, nn.Conv2d):
        return f"{math.sqrt(2 / (w.shape[0] * w[0, 0].numel())):.4f}"
    return f"{math.sqrt(2 / (w.shape[0] + w.shape[1])):.4f}"


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fusion", default="concat")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    layers = ("encoders.audio.backbone.conv1", "encoders.video.backbone.conv1", "encoders.audio.backbone.bn1",
              "encoders.audio.backbone.layer4.1.conv2")
    print(f"| layer | {' | '.join(f'{how}: std (mean)' for how in INITS)} | reference rule (ogm-ge) |")
    print("|---|" + "---|" * (len(INITS) + 1))
    models = {}
    for how in INITS:
        torch.manual_seed(args.seed)
        models[how] = MultimodalClassifier(["audio", "video"], 6, "resnet18", fusion=args.fusion, init=how)
    names = [*layers, *(n for n, m in models["torch"].named_modules()
                        if isinstance(m, nn.Linear) and not n.startswith("encoders"))]
    for name in names:
        mods = {how: dict(model.named_modules())[name] for how, model in models.items()}
        cells = [f"{float(m.weight.std()):.4f} ({float(m.weight.mean()):+.4f})" for m in mods.values()]
        print(f"| {name}.weight | {' | '.join(cells)} | {rule(mods['ogm-ge'])} |")
        if getattr(mods["torch"], "bias", None) is not None and isinstance(mods["torch"], nn.Linear):
            cells = [f"max abs {float(m.bias.abs().max()):.4f}" for m in mods.values()]
            print(f"| {name}.bias | {' | '.join(cells)} | 0 |")


if __name__ == "__main__":
    main()
