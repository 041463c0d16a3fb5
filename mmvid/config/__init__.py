"""Run configuration: dataclass defaults <- YAML recipe <- CLI flags <- ``--set``, validated, saved with every run.

``resolve_config(recipe, overrides)`` is the one entry point. Overrides are dotted keys
(``{"model.fusion": "concat", "augment.name": "bmm"}``); unknown keys, values of the wrong type and
values outside the range each field declares (:func:`mmvid.schema.spec`) are a one-line
:class:`MmvidError`. Imports no torch: a bad option fails fast.

- :mod:`mmvid.config.sections`: the sections and their fields (read by every layer, the data's included);
- :mod:`mmvid.config.recipes`: reading recipes;
- :mod:`mmvid.config.resolve`: putting it together and checking the plug-ins' settings.
"""

from mmvid.config.recipes import RECIPES, Recipe, find_recipe, load_recipe, read_recipe
from mmvid.config.resolve import (
    CALIBRATION,
    LEGACY_KEYS,
    PLUGIN_ARGS,
    PLUGIN_SECTIONS,
    apply_protocol,
    canonical_dict,
    check_aux_loss,
    check_plugin_args,
    config_from_dict,
    resolve_config,
    save_config,
)
from mmvid.config.sections import (
    ABSENT_MEANS,
    INITS,
    MODALITIES,
    PROTOCOLS,
    SELECTED_ON_TEST,
    AugmentConfig,
    BalanceConfig,
    DataConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    set_key,
)

__all__ = ["RECIPES", "Recipe", "find_recipe", "load_recipe", "read_recipe", "CALIBRATION", "LEGACY_KEYS", "PLUGIN_ARGS",
           "PLUGIN_SECTIONS", "apply_protocol", "canonical_dict", "check_aux_loss", "check_plugin_args",
           "config_from_dict", "resolve_config", "save_config", "ABSENT_MEANS", "INITS", "MODALITIES",
           "PROTOCOLS", "SELECTED_ON_TEST", "AugmentConfig", "BalanceConfig", "DataConfig", "ModelConfig",
           "OptimConfig", "TrainConfig", "set_key"]
