"""Per-modality encoders z_m = phi_m(x_m) in R^d.

Input shapes (B batch, T frames):
    audio  (B, 1, F, L)       log spectrogram
    video  (B, T, 3, H, W)    RGB frames, each encoded in 2-D, then pooled over T (as OGM-GE)
    flow   (B, T, 2, H, W)    u, v optical flow
Output: (B, d); d = 512 for ResNet-18, ``8 * width`` for the small encoder.

Both backbones have four stages (ResNet-18: stem + layer1, layer2, layer3, layer4; small: four
conv-BN-ReLU blocks) with d/8, d/4, d/2, d channels: a fusion with blocks between encoder stages runs
them stage by stage (:meth:`ModalityEncoder.frames`, :meth:`ModalityEncoder.run_stage`,
:meth:`ModalityEncoder.pool`) to insert its cross-modal blocks between stages.
"""

from __future__ import annotations

import torch
from torch import nn

IN_CHANNELS = {"audio": 1, "video": 3, "flow": 2}
NUM_STAGES = 4


def stage_channels(d: int) -> list[int]:
    """Channels after each of the four stages of an encoder with output size d: [d/8, d/4, d/2, d]."""
    return [d >> (NUM_STAGES - 1 - i) for i in range(NUM_STAGES)]


def _resnet18(in_ch: int) -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    net = resnet18(weights=None)  # from scratch, as in the paper
    if in_ch != 3:  # PyTorch's default init here (std 1/sqrt(3 * 49 in_ch)); model.init re-draws it (mmvid.models.init)
        net.conv1 = nn.Conv2d(in_ch, 64, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, 512


def _small(in_ch: int, width: int) -> tuple[nn.Module, int]:
    """Four conv-BN-ReLU stages with stride 2, then global average pooling: CPU-sized."""
    layers, c = [], in_ch
    for i in range(4):
        out = width * 2 ** min(i, 3)
        layers += [nn.Conv2d(c, out, 3, stride=2 if i else 1, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        c = out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c


class ModalityEncoder(nn.Module):
    """2-D backbone applied per frame (video/flow) or once (audio); frame features are averaged."""

    def __init__(self, modality: str, kind: str = "resnet18", width: int = 32) -> None:
        super().__init__()
        self.modality = modality
        self.kind = kind  # resnet18 | small (mmvid.models.init re-initialises only ResNet-18, the references' backbone)
        in_ch = IN_CHANNELS[modality]
        self.backbone, self.output_dim = _resnet18(in_ch) if kind == "resnet18" else _small(in_ch, width)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the last stage's map (N, d, h, w), before global pooling."""
        net = self.backbone
        if isinstance(net, nn.Sequential):  # small: [..stages.., pool, flatten]
            return net[:-2](x)
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def frames(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Input -> (N, C, H, W) images and T, the frames per clip (N = B * T; T = 1 for audio)."""
        if x.dim() == 5:
            return x.flatten(0, 1), x.shape[1]
        return x, 1

    def run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i (0..3) of the backbone on (N, C, H, W) maps; stage 3's output has ``output_dim`` channels."""
        net = self.backbone
        if isinstance(net, nn.Sequential):  # small: three layers (conv, BN, ReLU) per stage
            return net[3 * i:3 * i + 3](x)
        if i == 0:
            return net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        return getattr(net, f"layer{i + 1}")(x)

    def pool(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Last stage's (N, d, h, w) maps -> (B, d) feature: spatial mean, then mean over the T frames."""
        z = x.mean((2, 3))
        return z.view(-1, t, z.shape[1]).mean(1)

    def map_tokens(self, x: torch.Tensor, t: int, framed: bool) -> torch.Tensor:
        """Last stage's (N, d, h, w) maps -> the (B, N_tok, d) tokens of :meth:`tokens` (``framed``: the
        input was (B, T, C, H, W))."""
        if framed:
            z = x.mean((2, 3))
            return z.view(-1, t, z.shape[1])
        return x.mean(2).transpose(1, 2)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, d) tokens whose mean over N equals ``forward(x)``: one per frame for video/flow (N = T),
        one per time step of the last feature map for audio (frequency pooled), as a token-level attention needs."""
        if x.dim() == 5:
            b, t = x.shape[:2]
            return self.backbone(x.flatten(0, 1)).view(b, t, -1)
        return self._feature_map(x).mean(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # (B, T, C, H, W): 2-D per frame, mean over T
            b, t = x.shape[:2]
            return self.backbone(x.flatten(0, 1)).view(b, t, -1).mean(1)
        return self.backbone(x)
