"""``model.init`` as a setting: its default, and how configs saved before the key existed read back.
The computation itself is checked against the reference code in tests/reference/test_baseline_reference.py."""

from __future__ import annotations

from mmvid.config import TrainConfig, config_from_dict
from mmvid.sweep import config_difference


def test_default_is_the_reference_init():
    assert TrainConfig().model.init == "ogm-ge"


def test_config_saved_before_model_init_reads_back_as_the_torch_init():
    """A run saved before ``model.init`` existed was trained with PyTorch's defaults: resuming, evaluating or
    reusing it must say so, not today's default; a run saved with the key keeps it."""
    saved = TrainConfig().to_dict()
    del saved["model"]["init"]
    assert config_from_dict(saved).model.init == "torch"
    assert config_from_dict(TrainConfig().to_dict()).model.init == "ogm-ge"
    assert "init" not in saved["model"]  # the caller's dict is left alone
    # a sweep does not reuse such a run folder as if it had the reference init
    assert config_difference(saved, TrainConfig()) == "model.init: 'torch' there, 'ogm-ge' in the sweep"
    old_torch = TrainConfig()
    old_torch.model.init = "torch"
    assert config_difference(saved, old_torch) is None
