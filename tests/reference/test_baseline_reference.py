"""The baseline's initial weights and Remix's auxiliary-head loss against the reference code.

Re-typed below from reading (not copied):

* GeWu-Lab/OGM-GE_CVPR2022 (343dc1d): ``models/backbone.py`` (ResNet-18 with a modality-specific ``conv1``: 1
  input channel for audio, 3 for visual; its ``__init__`` loop: Conv2d ``kaiming_normal_(fan_out, relu)``,
  BatchNorm2d weight ~ N(1, 0.02), bias 0; visual input (B, C, T, H, W) folded to (B T, C, H, W)),
  ``models/fusion_modules.py`` (ConcatFusion ``fc_out``; SumFusion ``fc_x``, ``fc_y``; FiLM ``fc``, ``fc_out``;
  GatedFusion ``fc_x``, ``fc_y``, ``fc_out``), ``models/basic_model.py`` (``AVClassifier``: fusion module
  built first, then ``audio_net``, ``visual_net``; features pooled over (H, W), and over (T, H, W) for
  video), ``utils/utils.py`` ``weight_init`` and ``main.py`` (``model.apply(weight_init)`` right after the
  model is built: Linear ``xavier_normal_`` and bias 0, Conv2d ``kaiming_normal_(fan_out, relu)``,
  BatchNorm2d weight 1, bias 0).
* MatthewMaxy/Remix_ICML2025 (80898aa): ``models/models.py`` (``AVClassifier``: ``head`` Linear(1024, C) on
  cat(a, v), ``head_audio``, ``head_video`` Linear(512, C); visual input (B, C, T, H, W) permuted to
  (B, T, C, H, W) before the backbone), ``baseline.py`` (no ``weight_init``; Adam(lr 1e-3, betas 0.9/0.999,
  eps 1e-8, weight decay 1e-4); ``train_epoch``: loss = CE(out) + alpha CE(out_audio) + beta CE(out_video),
  alpha = beta = 0.5, on every step).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmvid.config import TrainConfig
from mmvid.engine.context import TrainingParts
from mmvid.engine.model import build_model
from mmvid.engine.step import AuxiliaryLoss, train_step
from mmvid.models.classifier import MultimodalClassifier
from mmvid.models.init import initialise
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS

load_plugins()
CLASSES = 6


# ----------------------------------------------------------------------------- the re-typed references

class RefBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))



def backbone_init(net: nn.Module) -> None:
    """The backbone's own init loop of models/backbone.py (``ResNet.__init__``), re-typed: convolutions
    kaiming-normal (fan_out, relu), norm weights N(1, 0.02^2) and biases 0."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, mean=1, std=0.02)
            nn.init.constant_(m.bias, 0)

class RefResNet18(nn.Module):
    """backbone.py's ResNet(BasicBlock, [2, 2, 2, 2], modality); ``layout`` is the visual input's: OGM-GE's
    (B, C, T, H, W) or Remix's (B, T, C, H, W)."""

    def __init__(self, modality: str, layout: str = "BCTHW") -> None:
        super().__init__()
        self.modality, self.layout = modality, layout
        self.inplanes = 64
        self.conv1 = nn.Conv2d(1 if modality == "audio" else 3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 1)
        self.layer2 = self._layer(128, 2)
        self.layer3 = self._layer(256, 2)
        self.layer4 = self._layer(512, 2)
        backbone_init(self)

    def _layer(self, planes: int, stride: int) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        blocks = [RefBlock(self.inplanes, planes, stride, down)]
        self.inplanes = planes
        blocks.append(RefBlock(planes, planes))
        return nn.Sequential(*blocks)

    def forward(self, x):
        if self.modality == "visual":
            if self.layout == "BCTHW":
                x = x.permute(0, 2, 1, 3, 4).contiguous()
            b, t, c, h, w = x.shape
            x = x.view(b * t, c, h, w)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class RefConcat(nn.Module):
    def __init__(self, output_dim: int) -> None:
        super().__init__()
        self.fc_out = nn.Linear(1024, output_dim)


class RefSum(nn.Module):
    def __init__(self, output_dim: int) -> None:
        super().__init__()
        self.fc_x = nn.Linear(512, output_dim)
        self.fc_y = nn.Linear(512, output_dim)


class RefFiLM(nn.Module):
    def __init__(self, output_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(512, 2 * 512)
        self.fc_out = nn.Linear(512, output_dim)


class RefGated(nn.Module):
    def __init__(self, output_dim: int) -> None:
        super().__init__()
        self.fc_x = nn.Linear(512, 512)
        self.fc_y = nn.Linear(512, 512)
        self.fc_out = nn.Linear(512, output_dim)


REF_FUSIONS = {"concat": RefConcat, "sum": RefSum, "film": RefFiLM, "gated": RefGated}


class RefOgmGe(nn.Module):
    """basic_model.py's AVClassifier: the fusion module first, then the two backbones."""

    def __init__(self, fusion: str) -> None:
        super().__init__()
        self.fusion_module = REF_FUSIONS[fusion](CLASSES)
        self.audio_net = RefResNet18("audio")
        self.visual_net = RefResNet18("visual")


def ref_weight_init(m: nn.Module) -> None:
    """utils.py's weight_init."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_normal_(m.weight)
        nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.constant_(m.weight, 1)
        nn.init.constant_(m.bias, 0)


class RefRemix(nn.Module):
    """Remix's models.py AVClassifier (mode=None)."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_net = RefResNet18("audio")
        self.visual_net = RefResNet18("visual", layout="BTCHW")
        self.head = nn.Linear(1024, CLASSES)
        self.head_audio = nn.Linear(512, CLASSES)
        self.head_video = nn.Linear(512, CLASSES)

    def forward(self, audio, visual):
        visual = visual.permute(0, 2, 1, 3, 4).contiguous()  # the loader's (B, C, T, H, W) -> (B, T, C, H, W)
        a, v = self.audio_net(audio), self.visual_net(visual)
        _, c, h, w = v.shape
        v = v.view(a.shape[0], -1, c, h, w).permute(0, 2, 1, 3, 4)
        a = torch.flatten(F.adaptive_avg_pool2d(a, 1), 1)
        v = torch.flatten(F.adaptive_avg_pool3d(v, 1), 1)
        return self.head(torch.cat((a, v), 1)), self.head_audio(a), self.head_video(v), a, v


def remix_baseline_loss(model: RefRemix, spec, image, label, alpha=0.5, beta=0.5):
    """baseline.py train_epoch's loss on one batch, and its two unimodal terms."""
    out, out_audio, out_video, _, _ = model(spec.float(), image.float())
    ce = nn.CrossEntropyLoss()
    loss_a, loss_v = ce(out_audio, label), ce(out_video, label)
    return ce(out, label) + alpha * loss_a + beta * loss_v, loss_a, loss_v


# ----------------------------------------------------------------------------- mmvid <-> reference names

def encoder_key(key: str) -> str | None:
    """mmvid's encoder state-dict key -> the reference's (``encoders.audio.backbone.X`` -> ``audio_net.X``)."""
    for mine, theirs in (("encoders.audio.backbone.", "audio_net."), ("encoders.video.backbone.", "visual_net.")):
        if key.startswith(mine):
            return theirs + key[len(mine):]
    return None


HEAD_KEYS = {  # mmvid's fusion / head parameters -> OGM-GE's fusion_module ones, per fusion
    "concat": {"head": "fusion_module.fc_out"},
    "sum": {"head.heads.audio": "fusion_module.fc_x", "head.heads.video": "fusion_module.fc_y"},
    "film": {"fusion.film": "fusion_module.fc", "head": "fusion_module.fc_out"},
}


def ogm_ge_key(key: str, fusion: str) -> str:
    mapped = encoder_key(key)
    if mapped is not None:
        return mapped
    module, _, leaf = key.rpartition(".")
    return f"{HEAD_KEYS[fusion][module]}.{leaf}"


def mmvid_model(fusion: str = "concat", init: str = "torch", **kw) -> MultimodalClassifier:
    return MultimodalClassifier(["audio", "video"], CLASSES, "resnet18", fusion=fusion, init=init, **kw)


# ----------------------------------------------------------------------------- initial weights

@pytest.mark.parametrize("fusion", ["concat", "sum", "film"])
def test_ogm_ge_init_draws_the_references_weights_bit_for_bit(fusion):
    """model.init=ogm-ge visits the reference's modules in the reference's order with the reference's rules: from
    the same generator state, every one of the state-dict's tensors equals the reference's after
    ``model.apply(weight_init)`` exactly (all 242 keys for concat map, with the same shapes)."""
    torch.manual_seed(1)
    ref = RefOgmGe(fusion)
    torch.manual_seed(2)  # whatever the construction drew, only the init's own draws decide the weights
    mine = mmvid_model(fusion, init="torch")
    torch.manual_seed(7)
    ref.apply(ref_weight_init)
    torch.manual_seed(7)
    initialise(mine, "ogm-ge")
    theirs, ours = ref.state_dict(), mine.state_dict()
    mapped = {ogm_ge_key(k, fusion): v for k, v in ours.items()}
    assert mapped.keys() == theirs.keys()
    if fusion == "concat":
        assert len(ours) == 242
    for k, v in mapped.items():
        assert v.shape == theirs[k].shape and torch.equal(v, theirs[k]), k


def test_remix_init_draws_the_references_backbone_weights_bit_for_bit():
    """model.init=remix is the loop of backbone.py's ResNet.__init__, audio encoder then video encoder (Remix's
    order of construction): the same generator state gives every encoder tensor exactly; heads keep PyTorch's
    default, as Remix's nn.Linear heads."""
    ref = RefRemix()
    mine = mmvid_model("concat", init="torch", aux_loss={"audio": 0.5, "video": 0.5})
    heads_before = {k: v.clone() for k, v in mine.state_dict().items() if not k.startswith("encoders.")}
    torch.manual_seed(3)
    for net in (ref.audio_net, ref.visual_net):
        backbone_init(net)
    torch.manual_seed(3)
    initialise(mine, "remix")
    theirs = ref.state_dict()
    for k, v in mine.state_dict().items():
        if encoder_key(k) is not None:
            assert torch.equal(v, theirs[encoder_key(k)]), k
        else:
            assert torch.equal(v, heads_before[k]), k  # not re-drawn
    bn = mine.encoders["audio"].backbone.bn1.weight.detach()
    assert 0.01 < float(bn.std()) < 0.03 and abs(float(bn.mean()) - 1) < 0.01


def within(sample: torch.Tensor, std: float, k: float = 6.0) -> bool:
    """Mean 0 and standard deviation ``std`` within k standard errors for n iid draws (SE of the mean
    std / sqrt(n), of the sample std about std / sqrt(2 n))."""
    n = sample.numel()
    return abs(float(sample.mean())) < k * std / math.sqrt(n) and abs(float(sample.std()) - std) < k * std / math.sqrt(2 * n)


def layer_statistics(model: nn.Module) -> list[tuple[str, str, torch.Tensor, nn.Module]]:
    return [(name, type(m).__name__, m.weight.detach(), m) for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d))]


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_initial_weight_statistics_per_layer_follow_the_reference_rule(fusion):
    """Per layer, the default build (``build_model`` of a default config) and the reference network
    (constructed, then ``model.apply(weight_init)``), each drawn from its own seed: conv std sqrt(2 / fan_out),
    Linear std sqrt(2 / (fan_in + fan_out)) and zero bias, BN weight 1 and bias 0; means 0. mmvid's bi-gated
    fusion is another network than OGM-GE's GatedFusion, so for ``gated`` mmvid's ``bigated`` is checked against
    the rule and the reference's layers separately."""
    cfg = TrainConfig()
    cfg.model.fusion = "bigated" if fusion == "gated" else fusion
    assert cfg.model.init == "ogm-ge"  # the default
    torch.manual_seed(11)
    mine = build_model(cfg, CLASSES)
    torch.manual_seed(12)
    ref = RefOgmGe(fusion)
    ref.apply(ref_weight_init)
    for model in (mine, ref):
        layers = layer_statistics(model)
        assert len([1 for _, kind, _, _ in layers if kind == "Conv2d"]) == 40  # 20 convolutions per ResNet-18
        for name, kind, w, m in layers:
            if kind == "Conv2d":
                assert within(w, math.sqrt(2 / (w.shape[0] * w[0, 0].numel()))), name
            elif kind == "Linear":
                assert within(w, math.sqrt(2 / (w.shape[0] + w.shape[1]))), name
                assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
            else:
                assert torch.equal(w, torch.ones_like(w)) and torch.equal(m.bias, torch.zeros_like(m.bias)), name


def test_torch_init_is_one_setting_away_and_is_what_mmvid_drew_before():
    """model.init=torch keeps PyTorch's default for the replaced 1-channel audio conv1 (std 1/sqrt(3 * 49) = 0.082,
    not the reference's sqrt(2 / 3136) = 0.025) and for the head (std 1/sqrt(3 * 1024), bias not zero): the
    statistics test above would fail on it."""
    torch.manual_seed(0)
    old = mmvid_model("concat", init="torch")
    conv1, head = old.encoders["audio"].backbone.conv1.weight.detach(), old.head.weight.detach()
    assert within(conv1, 1 / math.sqrt(3 * 49), k=6) and not within(conv1, math.sqrt(2 / 3136))
    assert within(head, 1 / math.sqrt(3 * 1024)) and not within(head, math.sqrt(2 / 1030))
    assert float(old.head.bias.detach().abs().max()) > 0
    # the visual conv1 is torchvision's (already kaiming fan_out) under both settings
    assert within(old.encoders["video"].backbone.conv1.weight.detach(), math.sqrt(2 / (64 * 49)))


@pytest.mark.parametrize("init", ["ogm-ge", "remix"])
def test_small_encoder_keeps_its_own_init_under_every_setting(init):
    """The CPU-sized encoder is in no reference: the same seed builds the same small model whatever model.init
    says (heads included), so the demo's figures do not depend on it."""
    def build(how):
        torch.manual_seed(5)
        return MultimodalClassifier(["audio", "video"], CLASSES, "small", 4, init=how, aux_loss={"audio": 1.0})
    a, b = build("torch").state_dict(), build(init).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- Remix's baseline loss

def remix_pair(seed: int = 0):
    """mmvid's concat model with the auxiliary heads and the reference holding the same weights."""
    torch.manual_seed(seed)
    mine = mmvid_model("concat", init="remix", aux_loss={"audio": 0.5, "video": 0.5})
    ref = RefRemix()
    theirs = {encoder_key(k) or {"head": "head", "aux_heads.audio": "head_audio",
                                  "aux_heads.video": "head_video"}[k.rpartition(".")[0]] + "." + k.rpartition(".")[2]: v
              for k, v in mine.state_dict().items()}
    ref.load_state_dict(theirs, strict=True)
    return mine, ref


def one_mmvid_step(model: MultimodalClassifier, inputs, y, lr: float = 1e-3):
    """engine.train_step with no augmentation and no balancer, Adam as baseline.py: (loss, gradients, parts)."""
    cfg = TrainConfig()
    cfg.model.aux_loss = {"audio": 0.5, "video": 0.5}
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-4)
    ctx = SimpleNamespace(cfg=cfg, model=model, optimizer=opt, scaler=torch.amp.GradScaler("cuda", enabled=False),
                          device=torch.device("cpu"), epoch=0, step=0, focus=None, world_size=1, rank=0,
                          info=SimpleNamespace(path=None))
    parts = TrainingParts(ctx, AUGMENTS.build("none", cfg.augment, cfg.data.modalities),
                          BALANCERS.build("none", cfg.balance, cfg.data.modalities), None, None, model,
                          aux=AuxiliaryLoss(cfg.model.aux_loss))
    model.train()
    _, loss, _ = train_step(parts, inputs, y)
    return loss, {k: p.grad.clone() for k, p in model.named_parameters()}, parts


def test_aux_loss_and_gradients_equal_remix_baseline():
    """On identical inputs and weights: mmvid's loss (engine.train_step with model.aux_loss = {audio: 0.5,
    video: 0.5}) equals baseline.py's CE(out) + 0.5 CE(out_audio) + 0.5 CE(out_video), every gradient (encoders,
    concat head, both unimodal heads) equals the reference's, and the metrics line's aux_loss_<m> are the
    reference's unweighted CE(out_audio), CE(out_video)."""
    mine, ref = remix_pair()
    g = torch.Generator().manual_seed(1)
    audio = torch.randn(4, 1, 64, 48, generator=g)
    video = torch.randn(4, 2, 3, 48, 48, generator=g)  # mmvid's (B, T, C, H, W)
    y = torch.tensor([0, 3, 5, 3])
    ref.train()
    ref_loss, ref_a, ref_v = remix_baseline_loss(ref, audio, video.permute(0, 2, 1, 3, 4), y)  # its loader's layout
    ref_loss.backward()
    ref_grads = {k: p.grad for k, p in ref.named_parameters()}

    loss, grads, parts = one_mmvid_step(mine, {"audio": audio, "video": video}, y)
    assert torch.allclose(loss, ref_loss, rtol=1e-5, atol=1e-6), (float(loss.detach()), float(ref_loss.detach()))
    names = {k: encoder_key(k) or k.replace("aux_heads.audio", "head_audio").replace("aux_heads.video", "head_video")
             for k in grads}
    assert sorted(names.values()) == sorted(ref_grads)
    for k, g_mine in grads.items():
        assert torch.allclose(g_mine, ref_grads[names[k]], rtol=1e-4, atol=1e-7), k
    logged = parts.aux.log()
    assert logged.keys() == {"aux_loss_audio", "aux_loss_video"}
    assert math.isclose(logged["aux_loss_audio"], float(ref_a.detach()), rel_tol=1e-5)
    assert math.isclose(logged["aux_loss_video"], float(ref_v.detach()), rel_tol=1e-5)
    assert parts.aux.log() == {}  # reset for the next epoch


def test_aux_heads_take_each_modalitys_mixed_target():
    """With input mixup every modality was mixed with weight w, so each head's CE is (1 - w) CE(., y) +
    w CE(., y_pi); with MM (fused-stage) the features are unmixed and the heads take the plain label."""
    from mmvid.augment.base import Mix

    torch.manual_seed(0)
    model = MultimodalClassifier(["audio", "video"], CLASSES, "small", 4, aux_loss={"audio": 0.5, "video": 2.0})
    feats = {"audio": torch.randn(6, 32), "video": torch.randn(6, 32)}
    y, perm = torch.tensor([0, 1, 2, 3, 4, 5]), torch.tensor([5, 4, 3, 2, 1, 0])
    aux = AuxiliaryLoss({"audio": 0.5, "video": 2.0})
    ce = nn.CrossEntropyLoss()
    heads = model.aux_heads
    for mix, w in ((Mix("input", perm, {"*": 0.3}, 0.3), 0.3), (Mix("fused", perm, {"fused": 0.3}, 0.3), 0.0)):
        out = SimpleNamespace(features=feats, mix=mix)
        want = sum(wt * ((1 - w) * ce(heads[m](feats[m]), y) + w * ce(heads[m](feats[m]), y[perm]))
                   for m, wt in (("audio", 0.5), ("video", 2.0)))
        assert torch.allclose(aux(model, out, y), want, rtol=1e-6)
