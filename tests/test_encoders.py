"""The encoder registry (ENCODERS), a different encoder per modality, user encoders, pretrained weights
(torchvision / timm state dicts, an mmvid run's encoder, torchvision weight names through its cache),
``model.init_from`` and ``model.freeze``. Nothing here downloads: the "pretrained" files are state dicts saved
from randomly initialised torchvision networks."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from rich.console import Console

from mmvid.config import resolve_config
from mmvid.data.cache import read_info
from mmvid.engine.loop import RunLoaders, build_training
from mmvid.engine.model import build_model
from mmvid.engine.step import train_step
from mmvid.engine.weights import load_start_weights
from mmvid.errors import MmvidError
from mmvid.models.encoders import INPUT_OF, Encoder
from mmvid.plugins import load_plugins
from mmvid.registry import ENCODERS
from mmvid.workflows import run_train

load_plugins()
QUIET = Console(quiet=True)
TIMM_MODEL = "resnet10t"  # timm's smallest ResNet


def _cache(ws: Path) -> Path:
    return ws / "caches" / "demo.h5"


def _uses(name: str, modalities=("audio", "video")) -> dict[str, str]:
    """Overrides giving encoder ``name`` to every modality whose input it takes, the small one elsewhere."""
    cls = ENCODERS.get(name)
    out = {"model.encoder": "small"}
    for m in modalities:
        if INPUT_OF[m] in cls.inputs:
            out[f"model.encoders.{m}.name"] = name
    if name == "timm":
        out.update({f"model.encoders.{m}.args": {"model": TIMM_MODEL} for m in modalities})
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cfg(overrides: dict, **more):
    return resolve_config("demo", {"data.dataset": "demo", "data.batch_size": 4, "monitor_train": 0, "epochs": 1,
                                   **overrides, **more}, notes=[])


# ----------------------------------------------------------------------------- the registry


@pytest.mark.parametrize("name", ENCODERS.names())
def test_each_encoder_trains_one_step_on_the_demo_cache(tiny_ws, tmp_path, name):
    """Each registered encoder, on the modalities whose input it declares, gives (B, output_dim) features and its
    weights move in one optimisation step of the engine on the demo cache."""
    if name == "timm":
        pytest.importorskip("timm")
    cfg = _cfg(_uses(name))
    training = build_training(cfg, read_info(_cache(tiny_ws)), tmp_path)
    model = training.ctx.model
    mine = [m for m in cfg.data.modalities if model.encoders[m].kind == name]
    assert mine and all(INPUT_OF[m] in type(model.encoders[m]).inputs for m in mine)
    inputs, y = next(iter(RunLoaders.build(training).train))
    before = {m: [p.detach().clone() for p in model.encoders[m].parameters()] for m in mine}
    out, loss, _ = train_step(training, inputs, y)
    assert torch.isfinite(loss)
    for m in mine:
        assert out.raw[m].shape == (len(y), model.encoders[m].output_dim)
        moved = [not torch.equal(a, b) for a, b in zip(before[m], model.encoders[m].parameters())]
        assert sum(moved) > len(moved) // 2, (m, sum(moved), len(moved))


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18", "mc3_18"])
def test_video_encoders_keep_frames_as_time_where_the_2d_ones_average_them(name):
    """Reversing the frames of a clip changes a video network's feature (T is a time axis: temporal kernels and
    strides) and leaves ResNet-18's unchanged (per-frame features averaged over T)."""
    torch.manual_seed(0)
    clip = torch.randn(2, 4, 3, 32, 32)
    video, frames = ENCODERS.build(name, "video").eval(), ENCODERS.build("resnet18", "video").eval()
    with torch.no_grad():
        assert not torch.allclose(video(clip), video(clip.flip(1)), atol=1e-5)
        assert torch.allclose(frames(clip), frames(clip.flip(1)), atol=1e-5)
        assert torch.allclose(video.tokens(clip).mean(1), video(clip), atol=1e-5)


def test_encoders_declare_inputs_and_output_size_and_refuse_another_input_in_one_line():
    sizes = {n: ENCODERS.build(n, "video").output_dim for n in ("resnet18", "resnet34", "resnet50", "r3d_18")}
    assert sizes == {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "r3d_18": 512}
    assert "spectrogram" not in ENCODERS.get("r3d_18").inputs and "spectrogram" in ENCODERS.get("resnet50").inputs
    with pytest.raises(MmvidError, match=r"model.encoders.audio.name=r3d_18: encoder 'r3d_18' takes frames, flow, "
                                         r"not audio's spectrogram.*resnet18") as e:
        resolve_config("demo", {"model.encoders.audio.name": "r3d_18"})
    assert "\n" not in str(e.value)
    with pytest.raises(MmvidError, match=r"model.encoder='resnet19': unknown encoder; choose one of: .*resnet18"):
        resolve_config("demo", {"model.encoder": "resnet19"})
    with pytest.raises(MmvidError, match=r"model.encoders.video.args.widht: encoder 'small' has no setting 'widht'"
                                         r"; did you mean model.encoders.video.args.width"):
        resolve_config("demo", {"model.encoders.video.name": "small", "model.encoders.video.args.widht": 8})
    with pytest.raises(MmvidError, match="model.fusion=mmtm runs the encoders stage by stage, which encoder 'r3d_18'"):
        build_model(resolve_config("demo", {"model.encoders.video.name": "r3d_18", "model.fusion": "mmtm"}), 4)


def test_model_encoder_is_every_modalitys_default_and_a_modality_may_name_its_own():
    cfg = resolve_config("demo", {"model.encoder": "small", "model.width": 4, "model.encoders.video.name": "resnet34",
                                  "data.modalities": ["audio", "video", "flow"]})
    model = build_model(cfg, 4)
    assert {m: e.kind for m, e in model.encoders.items()} == {"audio": "small", "video": "resnet34", "flow": "small"}
    assert model.encoders["audio"].output_dim == 32 and model.encoders["video"].output_dim == 512
    assert model.fusion.output_dim == 32 + 512 + 32
    cfg = resolve_config("demo", {"model.encoder": "small", "model.encoder_args.width": 6,
                                  "model.encoders.flow.args.width": 2, "data.modalities": ["audio", "flow"]})
    model = build_model(cfg, 4)
    assert (model.encoders["audio"].output_dim, model.encoders["flow"].output_dim) == (48, 16)


def test_timm_is_an_optional_extra_refused_in_one_line_without_it():
    import importlib.util

    if importlib.util.find_spec("timm") is not None:
        cfg = resolve_config("demo", {"model.encoder": "timm", "model.encoder_args.model": TIMM_MODEL})
        model = build_model(cfg, 4)
        assert model.encoders["audio"].backbone.num_features == model.encoders["audio"].output_dim
        with pytest.raises(MmvidError, match="has no model 'no_such_net' in timm"):
            resolve_config("demo", {"model.encoder": "timm", "model.encoder_args.model": "no_such_net"})
    else:
        with pytest.raises(MmvidError, match=r"encoder 'timm' needs the optional package timm: pip install 'mmvid\[timm\]'"):
            resolve_config("demo", {"model.encoder": "timm", "model.encoder_args.model": TIMM_MODEL})


PLUGIN = '''
from dataclasses import dataclass
from torch import nn
from mmvid.models.encoders import IN_CHANNELS, Encoder
from mmvid.registry import ENCODERS
from mmvid.schema import spec


@ENCODERS.register("tiny-mean", doc="A 1x1 convolution and a global mean.")
class TinyMean(Encoder):
    inputs = ("spectrogram", "frames")

    @dataclass
    class Settings:
        dim: int = spec(12, ge=1, le=512, help="output size")

    def __init__(self, modality, dim=12):
        super().__init__(modality)
        self.backbone = nn.Conv2d(IN_CHANNELS[modality], dim, 1)
        self.output_dim = dim

    def forward(self, x):
        z = self.backbone(x.flatten(0, 1) if x.dim() == 5 else x).mean((2, 3))
        return z.view(x.shape[0], -1, self.output_dim).mean(1)
'''


@pytest.fixture
def plugins_undone(monkeypatch):
    """What a plug-in imported here registers is gone after the test (the registry, the plug-ins loaded and
    MMVID_PLUGINS), so that later tests see mmvid's own entries only (docs tables, the settings walk, sweeps'
    commands)."""
    from mmvid import plugins

    for obj, names in ((ENCODERS, ("_entries", "_docs")), (plugins, ("_LOADED", "_MODULES_OF"))):
        for name in names:
            monkeypatch.setattr(obj, name, dict(getattr(obj, name)))
    monkeypatch.setattr(plugins, "_IMPORTED", set(plugins._IMPORTED))
    monkeypatch.setenv(plugins.ENV, os.environ.get(plugins.ENV, ""))
    return plugins


def test_a_users_encoder_registers_from_a_plugin_file_and_trains(tiny_ws, tmp_path, plugins_undone):
    plugins = plugins_undone
    path = tmp_path / "tiny_encoder.py"
    path.write_text(PLUGIN)
    plugins.use([str(path)])
    cfg = _cfg({"model.encoder": "small", "model.encoders.audio.name": "tiny-mean",
                "model.encoders.audio.args.dim": 20})
    assert str(path.resolve()) in cfg.plugins and cfg.plugin_sha256[str(path.resolve())] == _sha(path)
    training = build_training(cfg, read_info(_cache(tiny_ws)), tmp_path / "run")
    inputs, y = next(iter(RunLoaders.build(training).train))
    out, loss, _ = train_step(training, inputs, y)
    assert out.raw["audio"].shape == (len(y), 20) and torch.isfinite(loss)


# ----------------------------------------------------------------------------- pretrained weights


def _random_torchvision(arch: str, path: Path, seed: int = 1) -> dict:
    torch.manual_seed(seed)
    fn = getattr(torchvision.models, arch, None) or getattr(torchvision.models.video, arch)
    state = fn(weights=None).state_dict()
    torch.save(state, path)
    return state


def test_a_torchvision_state_dict_loads_with_the_first_convolution_averaged_for_audio_and_flow(tmp_path):
    """Every weight of a (random) torchvision ResNet-18 state dict reaches the encoders; the 1-channel audio and
    2-channel flow conv1 kernels are the mean of the RGB kernels; the classifier is dropped; the log says both;
    the config records the file's SHA-256."""
    path = tmp_path / "resnet18.pth"
    state = _random_torchvision("resnet18", path)
    sets = {f"model.encoders.{m}.weights": str(path) for m in ("audio", "video", "flow")}
    cfg = resolve_config("demo", {"model.encoder": "resnet18", "data.modalities": ["audio", "video", "flow"], **sets})
    model = build_model(cfg, 4)
    notes = load_start_weights(model, cfg)
    rgb_mean = state["conv1.weight"].mean(1, keepdim=True)
    for m, channels in (("audio", 1), ("video", 3), ("flow", 2)):
        got = model.encoders[m].backbone.state_dict()
        want = rgb_mean.expand(-1, channels, -1, -1) if channels != 3 else state["conv1.weight"]
        assert torch.equal(got["conv1.weight"], want)
        assert all(torch.equal(got[k], v) for k, v in state.items() if k != "conv1.weight" and not k.startswith("fc."))
        assert getattr(cfg.model.encoders, m).weights_sha256 == _sha(path)
    said = "\n".join(notes)
    assert "first convolution conv1.weight adapted from 3 input channels (RGB) to 1 (audio) by averaging the RGB kernels" in said
    assert "to 2 (flow)" in said and "pretrained classifier (fc.bias, fc.weight) is not loaded" in said


def test_a_torchvision_video_state_dict_loads_into_its_encoder_for_flow(tmp_path):
    path = tmp_path / "r2plus1d.pth"
    state = _random_torchvision("r2plus1d_18", path)
    cfg = resolve_config("demo", {"model.encoder": "small", "model.encoders.flow.name": "r2plus1d_18",
                                  "model.encoders.flow.weights": str(path), "data.modalities": ["audio", "flow"]})
    model = build_model(cfg, 4)
    notes = load_start_weights(model, cfg)
    got = model.encoders["flow"].backbone.state_dict()
    assert torch.equal(got["stem.0.weight"], state["stem.0.weight"].mean(1, keepdim=True).expand(-1, 2, -1, -1, -1))
    assert torch.equal(got["layer4.1.conv2.0.1.weight"], state["layer4.1.conv2.0.1.weight"])
    assert any("stem.0.weight adapted from 3 input channels (RGB) to 2 (flow)" in n for n in notes)


def test_weights_of_another_architecture_are_one_line_naming_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "resnet50.pth"
    _random_torchvision("resnet50", path)
    cfg = resolve_config("demo", {"model.encoder": "resnet18", "model.encoders.video.weights": str(path)})
    with pytest.raises(MmvidError) as e:
        load_start_weights(build_model(cfg, 4), cfg)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"model.encoders.video.weights={path}: the weights do not fit encoder "
                                                "'resnet18' of video")
    assert "unexpected keys: layer1.0.bn3.bias" in line and "other shapes: conv1.weight" not in line
    assert "missing keys: none" in line or "missing keys:" in line


def test_a_weights_file_that_is_missing_not_a_state_dict_or_changed_is_one_line(tmp_path):
    with pytest.raises(MmvidError, match=r"model.encoders.audio.weights=.*nope.pt: no such file or run folder"):
        resolve_config("demo", {"model.encoders.audio.weights": str(tmp_path / "nope.pt")})
    with pytest.raises(MmvidError, match=r"torchvision has no weights 'IMAGENET9K' for encoder 'small'"):
        resolve_config("demo", {"model.encoders.audio.weights": "IMAGENET9K"})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    cfg = resolve_config("demo", {"model.encoders.audio.weights": str(junk)})
    with pytest.raises(MmvidError, match="cannot read .*junk.pt: damaged, or not a PyTorch weights file"):
        load_start_weights(build_model(cfg, 4), cfg)
    code = tmp_path / "code.pt"
    torch.save({"conv1.weight": torch.zeros(1), "why": Path("x")}, code)  # a pickled object: opening it runs code
    cfg = resolve_config("demo", {"model.encoders.audio.weights": str(code)})
    with pytest.raises(MmvidError, match=r"code.pt holds objects other than tensors \(pathlib.*it is not loaded"):
        load_start_weights(build_model(cfg, 4), cfg)
    path = tmp_path / "r.pth"
    _random_torchvision("resnet18", path)
    cfg = resolve_config("demo", {"model.encoder": "resnet18", "model.encoders.audio.weights": str(path),
                                  "model.encoders.audio.weights_sha256": "0" * 64})
    with pytest.raises(MmvidError, match=r"r.pth changed since this config recorded it \(sha256 000000000000"):
        load_start_weights(build_model(cfg, 4), cfg)


def test_a_torchvision_weight_name_is_read_through_torchvisions_cache(tmp_path, monkeypatch):
    """``weights: IMAGENET1K_V1`` reads the file torchvision's cache holds for it ($TORCH_HOME): here a random
    state dict placed there, so nothing is downloaded."""
    from torchvision.models import ResNet18_Weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    state = _random_torchvision("resnet18", cached, seed=3)
    cfg = resolve_config("demo", {"model.encoder": "resnet18", "model.encoders.video.weights": "IMAGENET1K_V1"})
    model = build_model(cfg, 4)
    load_start_weights(model, cfg)
    assert torch.equal(model.encoders["video"].backbone.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert cfg.model.encoders.video.weights_sha256 == _sha(cached)


# ----------------------------------------------------------------------------- a run's encoders, freezing


def test_init_from_and_an_mmvid_runs_encoder_as_weights_start_from_that_runs_encoders(tiny_ws, tiny_run, monkeypatch):
    """A run trained with ``model.init_from: RUN`` starts from RUN's encoders (not its head), and records the
    checkpoint's hash in its config.yaml; ``weights: RUN`` does the same for one modality."""
    from mmvid.engine.checkpoints import checkpoint_file, load_checkpoint

    source = load_checkpoint(checkpoint_file(tiny_run))["model"]
    seen = {}
    import mmvid.engine.loop as loop

    real = loop.load_start_weights

    def spy(model, cfg):  # the model as the first step finds it
        seen["notes"] = real(model, cfg)
        seen["model"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return seen["notes"]

    monkeypatch.setattr(loop, "load_start_weights", spy)
    run = run_train(QUIET, tiny_ws, "demo", {"epochs": 1, "run_name": "from-tiny", "data.batch_size": 16,
                                             "model.init_from": str(tiny_run)}, progress=False)
    start = seen["model"]
    enc = [k for k in source if k.startswith("encoders.")]
    assert enc and all(torch.equal(start[k], source[k]) for k in enc)
    assert not torch.equal(start["head.weight"], source["head.weight"])
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["init_from_sha256"] == _sha(checkpoint_file(tiny_run))
    assert "audio, video encoder(s) loaded" in "\n".join(seen["notes"])
    run = run_train(QUIET, tiny_ws, "demo", {"epochs": 1, "run_name": "video-from-tiny", "data.batch_size": 16,
                                             "model.encoders.video.weights": str(tiny_run)}, progress=False)
    start = seen["model"]
    assert all(torch.equal(start[k], source[k]) for k in enc if k.startswith("encoders.video."))
    assert not torch.equal(start["encoders.audio.backbone.0.weight"], source["encoders.audio.backbone.0.weight"])


@pytest.mark.parametrize("freeze", ["encoders", "bn"])
def test_freeze_keeps_what_it_names_and_trains_the_rest(tiny_ws, tmp_path, freeze):
    """freeze=encoders (linear probing): no encoder weight or BN statistic moves in a step, the head does;
    freeze=bn: the encoders' BN running statistics stay, their convolutions train."""
    cfg = _cfg({"model.encoder": "small", "model.width": 4, "model.freeze": freeze})
    training = build_training(cfg, read_info(_cache(tiny_ws)), tmp_path)
    model = training.ctx.model
    model.train()
    inputs, y = next(iter(RunLoaders.build(training).train))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_step(training, inputs, y)
    after = model.state_dict()
    stats = [k for k in before if k.startswith("encoders.") and "running_" in k]
    convs = [k for k in before if k.startswith("encoders.") and k.endswith(".weight") and after[k].dim() == 4]
    assert stats and convs and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert all(torch.equal(before[k], after[k]) for k in convs) == (freeze == "encoders")
    with pytest.raises(MmvidError, match="model.freeze=encoders trains no encoder, whose learning balancer 'ogm-ge'"):
        _cfg({"model.freeze": "encoders", "balance.name": "ogm-ge"})


def test_an_old_config_without_the_encoder_keys_loads_as_it_was_trained():
    from mmvid.config import config_from_dict

    old = resolve_config("demo").to_dict()
    for key in ("encoder_args", "encoders", "init_from", "init_from_sha256", "freeze"):
        old["model"].pop(key)
    cfg = config_from_dict(old, notes=[])
    assert (cfg.model.encoder, cfg.model.freeze, cfg.model.encoders.audio.name) == ("small", "none", None)
    assert build_model(cfg, 4).encoders["video"].output_dim == 8 * 16


def test_the_encoders_appear_in_train_list():
    from typer.testing import CliRunner

    from mmvid.cli import app

    res = CliRunner().invoke(app, ["train", "--list"], env={"COLUMNS": "250"})
    assert res.exit_code == 0 and "encoders (" in res.output and "r2plus1d_18" in res.output, res.output


def test_a_timm_state_dict_loads_with_its_first_convolution_averaged(tmp_path):
    timm = pytest.importorskip("timm")
    path = tmp_path / "r10t.pth"
    torch.manual_seed(2)
    state = timm.create_model(TIMM_MODEL).state_dict()
    torch.save(state, path)
    cfg = resolve_config("demo", {"model.encoder": "timm", "model.encoder_args.model": TIMM_MODEL,
                                  "model.encoders.audio.weights": str(path)})
    model = build_model(cfg, 4)
    notes = load_start_weights(model, cfg)
    got = model.encoders["audio"].backbone.state_dict()
    first = model.encoders["audio"].first_conv
    assert torch.equal(got[first], state[first].mean(1, keepdim=True))
    assert all(torch.equal(v, state[k]) for k, v in got.items() if k != first)
    assert any(f"first convolution {first} adapted from 3 input channels (RGB) to 1 (audio)" in n for n in notes)
