from __future__ import annotations

import pytest

from mmvid.errors import MmvidError
from mmvid.plugins import load_plugins
from mmvid.registry import AUGMENTS, BALANCERS, FUSIONS, Registry


def test_duplicate_name_is_an_error():
    reg = Registry("thing")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)


def test_unknown_name_lists_choices():
    reg = Registry("thing")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    with pytest.raises(MmvidError, match="unknown thing 'gamma'; choose one of: alpha, beta"):
        reg.get("gamma")
    assert reg.build("beta") == 2 and reg.names("a*") == ["alpha"]


def test_required_entries_are_registered():
    load_plugins()
    assert {"concat"} <= set(FUSIONS.names())
    assert {"none", "mixup", "mm", "bmm"} <= set(AUGMENTS.names())
    assert "none" in BALANCERS.names()


def test_a_plugin_attribute_cannot_hide_a_hook():
    from mmvid.balance.base import Balancer
    from mmvid.config import BalanceConfig

    class Shadowing(Balancer):
        def __init__(self, cfg, modalities):
            super().__init__(cfg, modalities)
            self.epoch_order = [1, 2, 3]

    with pytest.raises(TypeError, match="epoch_order is a hook"):
        Shadowing(BalanceConfig(), ["audio", "video"])
