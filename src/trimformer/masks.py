"""Masks: which weights are kept.

The public form is NNI's: ``{module_name: {"weight": 0/1 float tensor of the weight's shape}}``
(optionally ``"bias"`` too). Masks are applied with ``torch.nn.utils.parametrize``, so a model
being pruned stays an ordinary module: same parameters, same optimiser, same state dict keys
under ``parametrizations``. They are saved as safetensors (``"<module>.weight"`` keys).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from trimformer.atomic import replaced

MaskDict = dict[str, dict[str, torch.Tensor]]


class WeightMask(nn.Module):
    """Parametrization ``w -> w * mask`` with the mask held as a (non-trainable) buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask.detach().clone().float(), persistent=False)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def find_mask_param(module: nn.Module, tensor_name: str = "weight") -> WeightMask | None:
    """The `WeightMask` parametrizing `module.<tensor_name>`, if any."""
    if not parametrize.is_parametrized(module, tensor_name):
        return None
    for p in module.parametrizations[tensor_name]:
        if isinstance(p, WeightMask):
            return p
    return None


def apply_masks(model: nn.Module, masks: MaskDict) -> None:
    """Attach (or update in place) mask parametrizations for every entry of `masks`."""
    for name, tensors in masks.items():
        module = model.get_submodule(name)
        for tensor_name, mask in tensors.items():
            target = getattr(module, tensor_name)
            if tuple(mask.shape) != tuple(target.shape):
                raise ValueError(
                    f"mask for {name}.{tensor_name} has shape {tuple(mask.shape)}, "
                    f"the tensor has {tuple(target.shape)}"
                )
            existing = find_mask_param(module, tensor_name)
            if existing is not None:
                existing.mask.copy_(mask.to(existing.mask.device, existing.mask.dtype))
            else:
                parametrize.register_parametrization(module, tensor_name, WeightMask(mask.to(target.device)))


def current_masks(model: nn.Module) -> MaskDict:
    """Read the masks currently attached to a model (copies, on CPU)."""
    out: MaskDict = {}
    for name, module in model.named_modules():
        if not parametrize.is_parametrized(module):
            continue
        for tensor_name in list(module.parametrizations.keys()):
            mask_param = find_mask_param(module, tensor_name)
            if mask_param is not None:
                out.setdefault(name, {})[tensor_name] = mask_param.mask.detach().cpu().clone()
    return out


def remove_masks(model: nn.Module, bake: bool = True) -> None:
    """Detach all parametrizations; with `bake`, the masked values are written into the weights."""
    for _, module in list(model.named_modules()):
        if parametrize.is_parametrized(module):
            for tensor_name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, tensor_name, leave_parametrized=bake)


def masks_sparsity(masks: MaskDict) -> dict[str, float]:
    """Fraction of zeros in each module's weight mask."""
    return {name: float(1.0 - t["weight"].float().mean()) for name, t in masks.items() if "weight" in t}


def save_masks(masks: MaskDict, path: str | os.PathLike) -> None:
    """Write masks to a safetensors file atomically (temp file, then rename)."""
    flat = {f"{name}.{tensor_name}": t.detach().cpu().contiguous().to(torch.uint8)
            for name, tensors in masks.items() for tensor_name, t in tensors.items()}
    with replaced(path) as tmp:
        save_file(flat, str(tmp), metadata={"format": "trimformer-masks"})


def load_masks(path: str | os.PathLike) -> MaskDict:
    """Read masks written by `save_masks` (no unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file not found: {path}")
    try:
        flat = load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"cannot read mask file {path}: {err}") from err
    masks: MaskDict = {}
    for key, t in flat.items():
        name, _, tensor_name = key.rpartition(".")
        masks.setdefault(name, {})[tensor_name] = t.float()
    return masks
