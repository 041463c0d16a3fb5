"""Per-modality encoders z_m = phi_m(x_m) in R^d: the ``ENCODERS`` registry (:mod:`mmvid.registry`).

Input shapes (B batch, T frames):
    audio  (B, 1, F, L)       log spectrogram                ("spectrogram")
    video  (B, T, 3, H, W)    RGB frames                     ("frames")
    flow   (B, T, 2, H, W)    u, v optical flow              ("flow")
Output: (B, d), d = :attr:`Encoder.output_dim` (512 for ResNet-18/34 and the video networks, 2048 for
ResNet-50, ``8 * width`` for the small encoder, ``num_features`` for a timm backbone).

Each entry declares the inputs it takes (:attr:`Encoder.inputs`), its output size and its typed ``Settings``:

* ``resnet18`` (the paper's, default), ``resnet34``, ``resnet50``, ``small`` and ``timm``: 2-D networks applied
  to each frame (video, flow) or once (audio); frame features are averaged over T, as OGM-GE does;
* ``r3d_18``, ``r2plus1d_18``, ``mc3_18`` (torchvision's video networks): the clip (B, 3, T, H, W) with T kept
  as time (3-D or (2+1)-D convolutions over it); frames and flow only.

The ResNets and the small encoder have four stages (ResNet: stem + layer1, layer2, layer3, layer4; small: four
conv-BN-ReLU blocks) with d/8, d/4, d/2, d channels: a fusion with blocks between encoder stages runs them
stage by stage (:meth:`Encoder.frames`, :meth:`Encoder.run_stage`, :meth:`Encoder.pool`) to insert its
cross-modal blocks between stages; an encoder with ``stages = False`` cannot be used with such a fusion.

A user's own encoder subclasses :class:`Encoder` and registers from a plug-in file (``--plugin``)::

    @ENCODERS.register("mine")
    class Mine(Encoder):
        inputs = ("spectrogram", "frames")
        def __init__(self, modality: str) -> None: ...
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass

import torch
from torch import nn

from mmvid.errors import MmvidError
from mmvid.registry import ENCODERS, check_plugin_settings
from mmvid.schema import spec

IN_CHANNELS = {"audio": 1, "video": 3, "flow": 2}
INPUT_OF = {"audio": "spectrogram", "video": "frames", "flow": "flow"}  # what each modality's tensor is
NUM_STAGES = 4


def stage_channels(d: int) -> list[int]:
    """Channels after each of the four stages of an encoder with output size d: [d/8, d/4, d/2, d]."""
    return [d >> (NUM_STAGES - 1 - i) for i in range(NUM_STAGES)]


class Encoder(nn.Module):
    """Base of every ``ENCODERS`` entry, built as ``cls(modality, **settings)``.

    Declares: :attr:`inputs` (which of "spectrogram", "frames", "flow" it takes), :attr:`output_dim` (d, set
    by the constructor), :attr:`stages` (whether it runs stage by stage, for a fusion between encoder stages) and, for pretrained weights
    (:mod:`mmvid.models.pretrained`): :attr:`first_conv` (the key of the first convolution's weight in
    :meth:`weights_module`'s state dict, adapted to 1 or 2 input channels), :attr:`head_keys` (the key
    prefixes of a pretrained network's classifier, dropped on load) and :meth:`torchvision_weights`.
    """

    inputs: tuple[str, ...] = ("spectrogram", "frames", "flow")
    stages = False
    first_conv = ""
    head_keys: tuple[str, ...] = ()
    output_dim: int

    def __init__(self, modality: str) -> None:
        super().__init__()
        self.modality = modality
        self.kind = ""  # its registered name (build_encoder)

    @classmethod
    def unavailable(cls, settings) -> str | None:
        """Why this encoder cannot be built here with ``settings`` (a package missing...), else None."""
        return None

    def weights_module(self) -> nn.Module:
        """The module a weights file is loaded into (``backbone`` where the encoder has one)."""
        return getattr(self, "backbone", self)

    def torchvision_weights(self, name: str):
        """torchvision's weights enum member ``name`` (``IMAGENET1K_V1``) for this architecture, or None."""
        return None

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, d) tokens whose mean over N equals ``forward(x)``; here one token (N = 1)."""
        return self(x)[:, None]

    def _no_stages(self):
        raise MmvidError(f"encoder {self.kind!r} does not run stage by stage, which a fusion between encoder stages needs; "
                         f"use resnet18, resnet34, resnet50 or small for {self.modality}")

    def frames(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Input -> (N, C, H, W) images and T, the frames per clip (N = B * T; T = 1 for audio)."""
        if not self.stages:
            self._no_stages()
        if x.dim() == 5:
            return x.flatten(0, 1), x.shape[1]
        return x, 1

    def run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage i (0..3) on (N, C, H, W) maps; stage 3's output has ``output_dim`` channels."""
        self._no_stages()

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


class FrameEncoder(Encoder):
    """A 2-D ``backbone`` (N, C, H, W) -> (N, d) applied per frame (video/flow) or once (audio); frame features
    are averaged over T (as OGM-GE)."""

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> the last stage's map (N, d, h, w), before global pooling."""
        for i in range(NUM_STAGES):
            x = self.run_stage(i, x)
        return x

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


def _torchvision(arch: str):
    import torchvision.models
    import torchvision.models.video

    return getattr(torchvision.models, arch, None) or getattr(torchvision.models.video, arch)


def _named_weights(arch: str, name: str):
    from torchvision.models import get_model_weights

    try:
        return get_model_weights(arch)[name]
    except (KeyError, ValueError):
        return None


class ResNetEncoder(FrameEncoder):
    """torchvision's ResNet from scratch (``weights=None``, as in the paper), ``fc`` removed; a 1-channel
    (audio) or 2-channel (flow) input gets its own ``conv1`` with PyTorch's default init (std 1/sqrt(3 * 49
    C_in); ``model.init`` re-draws it for ResNet-18, mmvid.models.init)."""

    arch = "resnet18"
    dim = 512
    stages = True
    first_conv = "conv1.weight"
    head_keys = ("fc.",)

    def __init__(self, modality: str) -> None:
        super().__init__(modality)
        net = _torchvision(self.arch)(weights=None)
        in_ch = IN_CHANNELS[modality]
        if in_ch != 3:
            net.conv1 = nn.Conv2d(in_ch, 64, kernel_size=7, stride=2, padding=3, bias=False)
        net.fc = nn.Identity()
        self.backbone, self.output_dim = net, self.dim

    def torchvision_weights(self, name: str):
        return _named_weights(self.arch, name)

    def run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        net = self.backbone
        if i == 0:
            return net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
        return getattr(net, f"layer{i + 1}")(x)


@ENCODERS.register("resnet18", doc="ResNet-18 (the paper's), 2-D per frame, d = 512.")
class ResNet18(ResNetEncoder):
    """ResNet-18, the paper's encoder: 2-D per frame, features averaged over T; d = 512."""


@ENCODERS.register("resnet34", doc="ResNet-34, 2-D per frame, d = 512.")
class ResNet34(ResNetEncoder):
    """ResNet-34: 2-D per frame, features averaged over T; d = 512."""

    arch = "resnet34"


@ENCODERS.register("resnet50", doc="ResNet-50, 2-D per frame, d = 2048.")
class ResNet50(ResNetEncoder):
    """ResNet-50 (bottleneck blocks): 2-D per frame, features averaged over T; d = 2048."""

    arch, dim = "resnet50", 2048


@ENCODERS.register("small", doc="Four conv-BN-ReLU stages (CPU-sized), d = 8 * width.")
class SmallEncoder(FrameEncoder):
    """Four conv-BN-ReLU stages (stride 1, 2, 2, 2; width, 2, 4, 8 x width channels), then global average
    pooling: CPU-sized, in no reference; d = 8 * width."""

    stages = True
    first_conv = "0.weight"

    @dataclass
    class Settings:
        width: int | None = spec(None, ge=1, le=4096, help="channels of the first stage; none = model.width")

    def __init__(self, modality: str, width: int | None = None) -> None:
        super().__init__(modality)
        layers, c = [], IN_CHANNELS[modality]
        for i in range(NUM_STAGES):
            out = (width or 32) * 2 ** min(i, 3)
            layers += [nn.Conv2d(c, out, 3, stride=2 if i else 1, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            c = out
        self.backbone = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.output_dim = c

    def run_stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.backbone[3 * i:3 * i + 3](x)  # conv, BN, ReLU


class VideoEncoder(Encoder):
    """torchvision's video ResNet on the clip: (B, T, C, H, W) -> (B, C, T, H, W) -> (B, 512), T kept as time
    (temporal convolutions and strides; the global pooling is over the last map's (t, h, w)). Flow gets its
    own 2-channel first convolution (PyTorch's default init)."""

    arch = "r3d_18"
    inputs = ("frames", "flow")
    first_conv = "stem.0.weight"
    head_keys = ("fc.",)

    def __init__(self, modality: str) -> None:
        super().__init__(modality)
        net = _torchvision(self.arch)(weights=None)
        conv = net.stem[0]
        if IN_CHANNELS[modality] != conv.in_channels:
            net.stem[0] = nn.Conv3d(IN_CHANNELS[modality], conv.out_channels, conv.kernel_size, conv.stride,
                                    conv.padding, bias=conv.bias is not None)
        net.fc = nn.Identity()
        self.backbone, self.output_dim = net, 512

    def torchvision_weights(self, name: str):
        return _named_weights(self.arch, name)

    def _feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) -> the last layer's (B, 512, t, h, w)."""
        net = self.backbone
        x = net.stem(x.permute(0, 2, 1, 3, 4))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, t, 512): one token per time step of the last map (space pooled); their mean is ``forward(x)``."""
        return self._feature_map(x).mean((3, 4)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x.permute(0, 2, 1, 3, 4))


@ENCODERS.register("r3d_18", doc="torchvision's R3D-18 on the clip (3-D convolutions, T kept as time), d = 512.")
class R3D18(VideoEncoder):
    """R3D-18 (Tran et al. 2018): 3-D convolutions over (T, H, W); frames and flow only; d = 512."""


@ENCODERS.register("r2plus1d_18", doc="torchvision's R(2+1)D-18 on the clip (T kept as time), d = 512.")
class R2Plus1D18(VideoEncoder):
    """R(2+1)D-18: each 3-D convolution split into a spatial and a temporal one; frames and flow only; d = 512."""

    arch = "r2plus1d_18"


@ENCODERS.register("mc3_18", doc="torchvision's MC3-18 on the clip (3-D then 2-D convolutions), d = 512.")
class MC318(VideoEncoder):
    """MC3-18: 3-D convolutions in the first layers, 2-D in the later ones; frames and flow only; d = 512."""

    arch = "mc3_18"


@ENCODERS.register("timm", doc="Any timm backbone (model.encoder_args.model), 2-D per frame; needs timm installed.")
class TimmEncoder(FrameEncoder):
    """A timm backbone (``timm.create_model(model, num_classes=0, in_chans=C)``: its pooled features, d =
    ``num_features``), applied per frame and averaged over T. Needs the optional package timm
    (``pip install 'mmvid[timm]'``)."""

    @dataclass
    class Settings:
        model: str | None = spec(None, help="the timm model name (timm.list_models()), e.g. resnet18d")

    @classmethod
    def unavailable(cls, settings) -> str | None:
        if importlib.util.find_spec("timm") is None:
            return "needs the optional package timm: pip install 'mmvid[timm]' (or pip install timm)"
        if not settings.model:
            return "needs a timm model name: set model.encoder_args.model=NAME (timm.list_models())"
        import timm

        if not timm.is_model(settings.model):
            return f"has no model {settings.model!r} in timm (timm.list_models() lists them)"
        return None

    def __init__(self, modality: str, model: str | None = None) -> None:
        super().__init__(modality)
        import timm

        self.backbone = timm.create_model(model, pretrained=False, num_classes=0, in_chans=IN_CHANNELS[modality])
        self.output_dim = int(self.backbone.num_features)
        cfg = getattr(self.backbone, "pretrained_cfg", {}) or {}
        self.first_conv = f"{cfg['first_conv']}.weight" if cfg.get("first_conv") else ""
        heads = cfg.get("classifier") or ()
        self.head_keys = tuple(f"{h}." for h in ((heads,) if isinstance(heads, str) else heads))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, d) per frame for video/flow; one token for audio."""
        if x.dim() == 5:
            b, t = x.shape[:2]
            return self.backbone(x.flatten(0, 1)).view(b, t, -1)
        return self(x)[:, None]


def takes(what: str) -> list[str]:
    """The encoders whose inputs include ``what`` (spectrogram, frames, flow)."""
    return [n for n in ENCODERS.names() if what in getattr(ENCODERS.get(n), "inputs", ())]


def check_encoder(name: str, modality: str, args: dict | None = None, key: str = "model.encoder"):
    """Encoder ``name``'s checked settings for ``modality``: an encoder that does not take the modality's input,
    or cannot be built here (:meth:`Encoder.unavailable`), is one line naming ``key``."""
    cls = ENCODERS.get(name)
    what = INPUT_OF[modality]
    if what not in getattr(cls, "inputs", ()):
        raise MmvidError(f"config {key}={name}: encoder {name!r} takes {', '.join(getattr(cls, 'inputs', ()))}, "
                         f"not {modality}'s {what}; choose another for {modality} (model.encoders.{modality}.name): "
                         f"{', '.join(takes(what))}")
    settings = check_plugin_settings(ENCODERS, name, args or {})
    why = cls.unavailable(settings) if hasattr(cls, "unavailable") else None
    if why:
        raise MmvidError(f"config {key}={name}: encoder {name!r} {why}")
    return settings


def build_encoder(name: str, modality: str, args: dict | None = None, width: int = 32) -> Encoder:
    """Encoder ``name`` for ``modality`` with its settings ``args`` (:func:`check_encoder`; a ``width`` left none
    takes ``width``, model.width)."""
    kwargs = asdict(check_encoder(name, modality, args))
    if "width" in kwargs and kwargs["width"] is None:
        kwargs["width"] = width
    enc = ENCODERS.get(name)(modality, **kwargs)
    enc.kind = name
    return enc


def encoder_choice(model_cfg, modality: str) -> tuple[str, dict]:
    """(name, settings mapping) of ``modality``'s encoder in a config's ``model`` section: its own
    ``model.encoders.<m>.name`` or else ``model.encoder``; ``model.encoder_args`` (when the name is
    model.encoder's) overridden by ``model.encoders.<m>.args``."""
    own = getattr(model_cfg.encoders, modality)
    name = own.name or model_cfg.encoder
    args = dict(model_cfg.encoder_args or {}) if name == model_cfg.encoder else {}
    return name, {**args, **(own.args or {})}


def ModalityEncoder(modality: str, kind: str = "resnet18", width: int = 32) -> Encoder:  # noqa: N802
    """The encoder ``kind`` for ``modality`` with default settings (the small one ``width`` wide)."""
    return build_encoder(kind, modality, {}, width)
