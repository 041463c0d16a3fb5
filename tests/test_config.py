from __future__ import annotations

import pytest
import yaml

from mmvid.config import TrainConfig, config_from_dict, resolve_config
from mmvid.errors import MmvidError


def test_precedence_defaults_recipe_flags(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"epochs": 7, "model": {"fusion": "concat", "encoder": "small"}, "optim": {"lr": 0.01}}))
    cfg = resolve_config(recipe, {"epochs": 3, "optim.lr": None, "augment.name": "bmm"})
    assert cfg.epochs == 3  # flag beats recipe
    assert cfg.optim.lr == 0.01  # recipe beats default; a None flag is "not given"
    assert cfg.model.encoder == "small" and cfg.augment.name == "bmm"
    assert cfg.data.batch_size == TrainConfig().data.batch_size


def test_round_trip_of_saved_config():
    cfg = resolve_config(None, {"augment.name": "bmm", "augment.args.beta": "0.5", "data.modalities": "audio,video,flow"})
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict())))
    assert again == cfg and again.augment.args["beta"] == 0.5 and again.data.modalities == ["audio", "video", "flow"]


def test_bmm_beta_without_a_recipe_is_the_data_set_recipes_value():
    """``--aug bmm`` with no recipe: beta is the CREMA-D recipe's 0.2 (not 1.0, where lambda_weak can approach 1),
    within the range every data set's recipe uses; a saved config keeps the beta it was trained with."""
    from mmvid.config import load_recipe

    default = resolve_config(None, {"augment.name": "bmm"}).augment.args["beta"]
    assert default == load_recipe("cremad")["augment"]["bmm"]["beta"] == 0.2
    for name in ("cremad", "kinetics-sounds", "ucf101", "ave", "vggsound", "proving"):
        assert 0.2 <= load_recipe(name)["augment"]["bmm"]["beta"] <= 0.4, name
    old = resolve_config(None, {"augment.name": "bmm", "augment.args.beta": 1.0}).to_dict()
    assert config_from_dict(old).augment.args["beta"] == 1.0


@pytest.mark.parametrize("key,value,needle", [
    ("epochs", "ten", "integer"), ("optim.lr", "-1", "(0, 10]"), ("nosuch", 1, "unknown config key"),
    ("model.nosuch", 1, "unknown config key"), ("device", "tpu", "auto"), ("data.modalities", "audio,smell", "list without repeats of"),
    ("model.calibrate", "maybe", "true or false"), ("epochs", 2.5, "integer"),
])
def test_bad_values_are_one_line_errors(key, value, needle):
    with pytest.raises(MmvidError) as e:
        resolve_config(None, {key: value})
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_yaml_null_is_none_not_a_string():
    cfg = resolve_config({"optim": {"grad_clip": None}, "run_name": "null"})
    assert cfg.optim.grad_clip is None and cfg.run_name is None


def test_shipped_recipes_resolve():
    from pathlib import Path

    for path in sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml")):
        resolve_config(path)


def test_optimizer_choice():
    import torch

    from mmvid.engine.loop import make_optimizer

    w = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(w, resolve_config(None, {"optim.name": "sgd", "optim.momentum": 0.5, "optim.lr": 0.1}).optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.5 and sgd.defaults["lr"] == 0.1
    adam = make_optimizer(w, resolve_config(None, {}).optim)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["betas"] == (0.9, 0.999)
