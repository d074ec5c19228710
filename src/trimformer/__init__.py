"""trimformer: structured pruning and distillation for transformers, with proof."""

from trimformer.masks import MaskDict, apply_masks, current_masks, load_masks, remove_masks, save_masks

__all__ = ["MaskDict", "apply_masks", "current_masks", "load_masks", "remove_masks", "save_masks"]
__version__ = "0.1.0"
