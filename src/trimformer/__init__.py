"""trimformer: structured pruning and distillation for transformers, with proof."""

from trimformer.config import ConfigError, parse_config_list
from trimformer.masks import MaskDict, apply_masks, current_masks, load_masks, remove_masks, save_masks
from trimformer.presets import (
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    MovementPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
    trace,
)
from trimformer.pruners import MovementEngine, Pruner
from trimformer.select import Target, select_targets

__all__ = [
    "ConfigError", "parse_config_list", "MaskDict", "apply_masks", "current_masks", "load_masks",
    "remove_masks", "save_masks", "L1NormPruner", "L2NormPruner", "LevelPruner", "MovementPruner",
    "TaylorFOWeightPruner", "TorchEvaluator", "trace", "MovementEngine", "Pruner", "Target", "select_targets",
]
__version__ = "0.1.0"
