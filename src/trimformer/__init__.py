"""trimformer: structured pruning and distillation for transformers, with proof."""

from trimformer.config import ConfigError, parse_config_list
from trimformer.io import PrunedModelError, load_pruned, save_pruned
from trimformer.masks import MaskDict, apply_masks, current_masks, load_masks, remove_masks, save_masks
from trimformer.movement import MovementEngine
from trimformer.presets import (
    L1NormPruner,
    L2NormPruner,
    LevelPruner,
    MovementPruner,
    TaylorFOWeightPruner,
    TorchEvaluator,
    trace,
)
from trimformer.pruners import Pruner
from trimformer.select import Target, select_targets
from trimformer.shrink import ShrinkCheckError, ShrinkPlan, apply_plan, plan_from_masks, shrink
from trimformer.speedup import ModelSpeedup

__all__ = [
    "ConfigError", "parse_config_list", "MaskDict", "apply_masks", "current_masks", "load_masks",
    "remove_masks", "save_masks", "L1NormPruner", "L2NormPruner", "LevelPruner", "MovementPruner",
    "TaylorFOWeightPruner", "TorchEvaluator", "trace", "MovementEngine", "Pruner", "Target", "select_targets",
    "PrunedModelError", "load_pruned", "save_pruned", "ShrinkCheckError", "ShrinkPlan", "apply_plan",
    "plan_from_masks", "shrink", "ModelSpeedup",
]
__version__ = "0.1.0"
