"""Every bad value gets one line naming the field and what it accepts, exit 2, no traceback (issue 10 §2).

The cases are generated from the schema itself (mmvid.schema.spec on each field), so a field added
with its range is walked here without editing this file.
"""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mmvid.cli import app
from mmvid.config import TrainConfig
from mmvid.data.params import PrepareParams
from mmvid.errors import MmvidError
from mmvid.schema import _base_type, rule_of, unbounded_fields, walk_fields

runner = CliRunner()


# Names that would leave the folder they are joined to, or hide in it: an escape, an absolute path, the folder
# itself, its parent, a sub-path, nothing, a hidden file (tests/test_names.py runs them through every command).
BAD_NAMES = ["../x", "/abs", ".", "..", "a/b", "", ".hidden"]


def bad_values(f, tp) -> list[str]:
    """Out-of-range, wrong-type and non-finite spellings for one field, as a user would type them."""
    base, rule = _base_type(tp)[0], rule_of(f)
    if base is bool:
        return ["maybe", "2"]
    if typing.get_origin(base) is dict:
        return ["{bad yaml", "5", "[1, 2]"]
    if rule is None:
        return []  # a free string (names checked by registries)
    if rule.items:  # free strings (plug-in files or modules): a line each, so an item with a line break is wrong
        return ["x.py\ny.py"]
    if rule.name:  # a name that becomes a path (run_name, data.dataset): every way out of its folder
        return list(BAD_NAMES)
    if rule.choices is not None:
        if typing.get_origin(base) is list:
            return ["bogus", f"{rule.choices[0]},{rule.choices[0]}", "[]"]
        return ["bogus", "5"]
    out = ["abc", "nan", "inf", "-inf", "1e400"]
    out.append(str(rule.ge - 1) if rule.ge is not None else str(rule.gt))  # just below the range
    out.append(str(rule.le + 1) if rule.le is not None else str(rule.lt))  # just above it
    if base is int:
        out += ["2.5", "99999999999999999999999"]
    return out


def describe(f, tp) -> str:
    rule = rule_of(f)
    if rule is not None:
        return rule.describe(tp)
    return "true or false" if _base_type(tp)[0] is bool else "a mapping"


CONFIG_CASES = [(key, v, describe(f, tp)) for key, f, tp in walk_fields(TrainConfig) for v in bad_values(f, tp)]


def one_error_line(res, *needles: str, progress: bool = False) -> str:
    """Exit 2 and one line (after the progress bars of a run, with ``progress``) holding every needle."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and (res.exception is None or isinstance(res.exception, SystemExit))
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    lines = lines[-1:] if progress else lines
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_every_number_is_bounded_and_every_list_has_choices():
    gaps = unbounded_fields(TrainConfig) + unbounded_fields(PrepareParams)
    assert gaps == [], f"declare the valid range of {gaps} next to the field: spec(default, ge=..., le=...)"
    assert len(CONFIG_CASES) > 100  # the walk really covers the schema


@pytest.mark.parametrize("key,value,accepts", CONFIG_CASES)
def test_set_rejects_bad_value(tmp_path, key, value, accepts):
    """`--set key=value`: one line with the key, what it accepts and the option that gave it."""
    res = runner.invoke(app, ["train", "-w", str(tmp_path), "--set", f"{key}={value}"])
    one_error_line(res, f"config {key}=", accepts, f"--set {key}")


def _recipe(tmp_path, key: str, value) -> str:
    nested: dict = {}
    node = nested
    *sections, last = key.split(".")
    for s in sections:
        node = node.setdefault(s, {})
    node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(nested))
    return str(path)


@pytest.mark.parametrize("key,value,accepts", CONFIG_CASES)
def test_recipe_rejects_bad_value(tmp_path, key, value, accepts):
    """The same value in a recipe (a YAML string): the same line, naming the recipe (library level: the CLI
    prints this error as it prints the ones above)."""
    from mmvid.config import resolve_config

    recipe = _recipe(tmp_path, key, value)
    with pytest.raises(MmvidError) as e:
        resolve_config(recipe)
    msg = str(e.value)
    assert "\n" not in msg and f"config {key}=" in msg and accepts in msg and recipe in msg


@pytest.mark.parametrize("key,value,accepts", [
    ("optim.lr", float("nan"), "(0, 10]"), ("epochs", float("inf"), "[1, 1000000]"), ("seed", -1, "[0, 4294967295]"),
    ("model.width", 0, "[1, 4096]"), ("optim.momentum", -1.0, "[0, 1)"), ("data.modalities", [], "non-empty list"),
    ("optim.gamma", -1, "(0, 1]"), ("data.crop_size", 0, "[1, 8192] or none"), ("optim.grad_clip", -1, "(0, 1e+09] or none"),
    ("augment.args", 5, "a mapping"), ("model.calibrate", 3, "true or false"), ("epochs", 2.5, "an integer"),
])
def test_recipe_rejects_native_yaml_values(tmp_path, key, value, accepts):
    recipe = _recipe(tmp_path, key, value)
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", recipe]), f"config {key}=", accepts, recipe)


@pytest.mark.parametrize("args,needles", [
    (["--lr", "nan"], ["optim.lr=nan", "(0, 10]", "--lr"]),
    (["--lr", "inf"], ["optim.lr=inf", "(0, 10]", "--lr"]),
    (["--lr", "1e300"], ["optim.lr=1e+300", "(0, 10]", "--lr"]),
    (["--workers", "-1"], ["data.workers=-1", "[0, 1024]", "--workers"]),
    (["--seed", "-1"], ["seed=-1", "[0, 4294967295]", "--seed"]),
    (["--seed", "99999999999999999999"], ["seed=99999999999999999999", "[0, 4294967295]", "--seed"]),
    (["--epochs", "99999999999999999999999"], ["epochs=", "[1, 1000000]", "--epochs"]),
    (["--batch-size", "0"], ["data.batch_size=0", "[1, 65536]", "--batch-size"]),
    (["--gpus", "0"], ["gpus=0", "[1, 4096]", "--gpus"]),
    (["--amp", "fp8"], ["amp='fp8'", "one of: off, bf16, fp16", "--amp"]),
])
def test_flags_reject_bad_values(tmp_path, args, needles):
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), *args]), *needles)


@pytest.mark.parametrize("section", ["data", "model", "augment", "balance", "optim"])
def test_a_section_cannot_be_replaced_by_a_value(tmp_path, section):
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--set", f"{section}=5"]), f"{section} is a section")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"{section}: 5\n")
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(recipe)]), f"{section} is a section", str(recipe))


def test_unreadable_recipes(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"epochs: 3\n# caf\xe9 \xff\n")
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(bad)]), str(bad), "not UTF-8")
    folder = tmp_path / "recipes_dir"
    folder.mkdir()
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), "--recipe", str(folder)]), str(folder), "not a file")


@pytest.mark.parametrize("kind,args", [("balance", ["--balance", "ogm-ge", "--set", "balance.args.alpha=abc"]),
                                       ("balance", ["--balance", "greedy", "--set", "balance.args={window: {a: 1}}"]),
                                       ("augment", ["--aug", "msmix", "--set", "augment.args.tau=abc"])])
def test_plugin_args_a_plugin_cannot_parse(tmp_path, kind, args):
    # Each plug-in's settings are typed now: the line names the setting (balance.args.alpha=...) and the plug-in.
    one_error_line(runner.invoke(app, ["train", "-w", str(tmp_path), *args]), f"config {kind}.args.", "is not valid for")


def test_valid_edge_values_are_accepted():
    from mmvid.config import resolve_config

    cfg = resolve_config(None, {"optim.lr": "10", "seed": str(2**32 - 1), "data.workers": "0", "optim.grad_clip": "none",
                                "data.val_fraction": "0", "data.crop_size": "null"})
    assert cfg.optim.lr == 10.0 and cfg.seed == 2**32 - 1 and cfg.optim.grad_clip is None and cfg.data.crop_size is None


# ----------------------------------------------------------------------------- prepare

PREPARE_FLAGS = {"--frames": "num_frames", "--fps": "fps", "--image-size": "image_size", "--sample-rate": "sample_rate",
                 "--clip-seconds": "clip_seconds", "--flow": "flow", "--missing-audio": "missing_audio",
                 "--frame-size": "frame_size", "--frame-select": "frame_select", "--audio-feature": "audio_feature"}
PARAM_FIELDS = {key: (f, tp) for key, f, tp in walk_fields(PrepareParams)}


def prepare_flag_cases():
    for flag, key in PREPARE_FLAGS.items():
        f, tp = PARAM_FIELDS[key]
        base = _base_type(tp)[0]
        for v in bad_values(f, tp):
            if (base is int and v in ("abc", "nan", "inf", "-inf", "1e400", "2.5")) or (base is float and v == "abc"):
                continue  # not a number of the flag's type: click rejects it before mmvid sees it
            if flag == "--fps" and v in ("0", "0.0"):
                continue  # --fps 0 means the native frame rate
            yield flag, v, describe(f, tp)


@pytest.mark.parametrize("flag,value,accepts", list(prepare_flag_cases()))
def test_prepare_flags_reject_bad_values_before_any_work(tmp_path, flag, value, accepts):
    res = runner.invoke(app, ["prepare", "demo", "-w", str(tmp_path), flag, value])
    one_error_line(res, f"{flag}=", accepts)
    assert not any(tmp_path.iterdir())  # nothing generated, listed or decoded: the value never reached a decoder


@pytest.mark.parametrize("args,needles", [
    (["--clips", "-3"], ["--clips=-3", "[10, 1000000]"]),
    (["--seed", "-1"], ["--seed=-1", "[0, 4294967295]"]),
    (["--workers", "0"], ["--workers=0", "[1, 1024]"]),
    (["--param", "jpeg_quality=101"], ["--param jpeg_quality=", "[0, 100]"]),
    (["--param", "stft_pad=edge"], ["--param stft_pad=", "constant, reflect"]),
    (["--param", "stft_padd=reflect"], ["unknown prepare parameter 'stft_padd'", "stft_pad"]),
    (["--param", "reflect"], ["--param 'reflect' must look like key=value"]),
    (["--frame-select", "remix", "--param", "frame_select=remix"], ["repeats a prepare option"]),
    (["--preset", "remix"], ["--preset 'remix' is not valid", "demo has no presets"]),
])
def test_prepare_own_options(tmp_path, args, needles):
    one_error_line(runner.invoke(app, ["prepare", "demo", "-w", str(tmp_path), *args]), *needles)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("key", [k for k, (f, tp) in PARAM_FIELDS.items() if rule_of(f) is not None])
def test_every_prepare_parameter_is_checked(key):
    f, tp = PARAM_FIELDS[key]
    for v in bad_values(f, tp):
        with pytest.raises(MmvidError) as e:
            PrepareParams.build({key: v})
        assert f"prepare parameter {key}=" in str(e.value) and describe(f, tp) in str(e.value) and "\n" not in str(e.value)


def test_prepare_fps_zero_means_native():
    assert PrepareParams.build({"fps": None}).fps is None


# ----------------------------------------------------------------------------- real processes


def _mmvid(*args: str, code: str = "") -> subprocess.CompletedProcess:
    """`mmvid ARGS` in a fresh interpreter; afterwards ``code`` runs in it (e.g. to inspect sys.modules)."""
    prog = ("import sys\nfrom mmvid.cli import app\ntry:\n    app(sys.argv[1:], prog_name='mmvid')\n"
            f"except SystemExit as e:\n    {code or 'pass'}\n    raise\n")
    return subprocess.run([sys.executable, "-c", prog, *args], capture_output=True, text=True, timeout=300)


def test_rejected_train_option_imports_no_torch(tmp_path):
    proc = _mmvid("train", "-w", str(tmp_path), "--lr", "nan",
                  code="assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import'")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "optim.lr=nan" in proc.stderr and "Traceback" not in proc.stderr


def test_sample_rate_zero_is_one_line_not_a_crash(tmp_path, shared_data):
    root = tmp_path / "clips"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.mp4").symlink_to(next((shared_data / "kinetics_sounds_style" / "videos").glob("*.mp4")))
    proc = _mmvid("prepare", "folder", "--root", str(root), "-w", str(tmp_path / "ws"), "--sample-rate", "0")
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert proc.stderr.strip().count("\n") == 0 and "--sample-rate=0" in proc.stderr and "[1000, 384000]" in proc.stderr


def test_bad_set_in_a_real_process(tmp_path):
    proc = _mmvid("train", "-w", str(tmp_path), "--set", "optim.step_size=0")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "optim.step_size='0'" in proc.stderr


# ----------------------------------------------------------------------------- non-finite training


def test_non_finite_weights_stop_a_one_step_run(tiny_ws, monkeypatch):
    """lr = inf (now rejected as an option) used to give NaN weights and exit 0 when the run's only step
    diverged; whatever makes the weights non-finite, the run must stop with exit 2 and say where."""
    real = torch.optim.Adam
    monkeypatch.setattr(torch.optim, "Adam", lambda params, lr, **kw: real(params, lr=float("inf"), **kw))
    res = runner.invoke(app, ["train", "-w", str(tiny_ws), "--recipe", "demo", "--epochs", "1", "--batch-size", "64",
                              "--run-name", "diverge"])
    one_error_line(res, "weights became non-finite", "epoch 1, step 0", "optim.lr", progress=True)


def test_non_finite_gradients_stop_training(tiny_ws, monkeypatch):
    from mmvid.engine import loop

    real = loop.build_model

    def poisoned(cfg, num_classes):
        model = real(cfg, num_classes)
        next(model.parameters()).register_hook(lambda g: g * float("nan"))
        return model

    monkeypatch.setattr(loop, "build_model", poisoned)
    res = runner.invoke(app, ["train", "-w", str(tiny_ws), "--recipe", "demo", "--epochs", "1", "--batch-size", "64",
                              "--run-name", "nan-grad"])
    one_error_line(res, "gradients and weights became non-finite", "epoch 1, step 0", progress=True)
