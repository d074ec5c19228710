"""NNI-compatible `ModelSpeedup` for Linear -> elementwise -> Linear chains.

NNI's tutorial calls ``ModelSpeedup(model.bert.encoder, dummy_input, masks).speedup_model()`` with
FFN masks keyed relative to the encoder (``layer.0.intermediate.dense``). No graph tracing here:
a masked linear's consumer is found from the structure tables (transformer FFNs) or, in a plain
``nn.Sequential``, as the next Linear after elementwise modules. Anything else is refused with
a ValueError naming the module.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from operator import attrgetter

import torch
from torch import nn

from trimformer.masks import MaskDict, load_masks, remove_masks
from trimformer.shrink import (
    FFN_ACTIVATION,
    attached_masks,
    compare_outputs,
    fold_dead_channels,
    model_output,
    prune_linear,
    record_shapes,
)
from trimformer.structure import FAMILIES, family_of

# Modules that act on each channel independently (so a constant channel stays constant).
ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU,
               nn.CELU, nn.Softplus, nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Identity,
               nn.Dropout)


def _is_elementwise(module: nn.Module) -> bool:
    if isinstance(module, ELEMENTWISE):
        return True
    # transformers' activation classes (GELUActivation, ...) are parameterless elementwise maps
    return type(module).__module__ == "transformers.activations" and not any(module.parameters())


@dataclass(frozen=True)
class Route:
    """A masked producer linear, the linear that consumes its output, and what lies between."""

    producer: str
    consumer: str
    between: tuple  # elementwise modules or callables applied to the producer's output, in order
    layer_list: str | None = None  # set for transformer FFNs: the layer ModuleList's name
    family: str | None = None


class ModelSpeedup:
    """Remove the output channels that masks remove entirely, and the matching consumer inputs.

    `masks` is a MaskDict keyed relative to `module` (or a path to a masks safetensors file);
    mask parametrizations already on `module` are used too. Outputs on `dummy_input` (a tensor or
    a tuple of tensors, e.g. float [B, S, hidden] for an encoder) are checked against the masked
    module's, within `atol`.
    """

    def __init__(self, module: nn.Module, dummy_input, masks: MaskDict | str | os.PathLike | None,
                 *, atol: float = 1e-5):
        self.module = module
        self.dummy_input = dummy_input
        self.masks = load_masks(masks) if isinstance(masks, str | os.PathLike) else dict(masks or {})
        self.atol = atol

    def speedup_model(self) -> nn.Module:
        """Shrink in place and return the module."""
        masks = attached_masks(self.module)
        for name, tensors in self.masks.items():
            for tensor_name, mask in tensors.items():
                old = masks.setdefault(name, {}).get(tensor_name)
                masks[name][tensor_name] = mask if old is None else old * mask.to(old.device)
        removable = {}
        for name, tensors in masks.items():
            if "weight" in tensors and tensors["weight"].dim() == 2:
                alive = tensors["weight"].ne(0).any(dim=1).cpu()
                if not alive.all():
                    removable[name] = alive
        # Route everything before touching the module, so a refusal leaves it unchanged.
        routes = [self._route(name) for name in removable]
        remove_masks(self.module, bake=True)
        with torch.no_grad():
            for name, tensors in self.masks.items():
                target_module = self.module.get_submodule(name)
                for tensor_name, mask in tensors.items():
                    target = getattr(target_module, tensor_name)
                    target.mul_(mask.to(target.device, target.dtype))
        reference = model_output(self.module, self.dummy_input)
        for route in routes:
            self._remove(route, removable[route.producer].nonzero().flatten())
        self._record(routes)
        compare_outputs(reference, model_output(self.module, self.dummy_input), self.atol, "ModelSpeedup")
        return self.module

    def _route(self, name: str) -> Route:
        producer = self.module.get_submodule(name)
        if not isinstance(producer, nn.Linear):
            raise ValueError(f"cannot propagate from {name!r}: only nn.Linear producers are supported, "
                             f"got {type(producer).__name__}")
        route = self._transformer_route(name) or self._sequential_route(name)
        if route is None:
            raise ValueError(
                f"cannot propagate from {name!r}: it is neither a transformer FFN input linear "
                "(e.g. 'layer.0.intermediate.dense') nor followed by elementwise modules and a Linear "
                "in an nn.Sequential; heads are shrunk with trimformer.shrink on the whole model")
        return route

    def _transformer_route(self, name: str) -> Route | None:
        family = family_of(self.module)
        tables = {family: FAMILIES[family]} if family else FAMILIES
        for fam, table in tables.items():
            match = re.fullmatch(rf"((?:.*\.)?\d+\.){re.escape(table.ffn_in)}", name)
            if not match:
                continue
            prefix = match.group(1)
            try:
                consumer = self.module.get_submodule(prefix + table.ffn_out)
                act = attrgetter(FFN_ACTIVATION[fam])(self.module.get_submodule(prefix[:-1]))
            except AttributeError:
                continue
            if isinstance(consumer, nn.Linear):
                return Route(name, prefix + table.ffn_out, (act,), prefix[:-1].rpartition(".")[0], fam)
        return None

    def _sequential_route(self, name: str) -> Route | None:
        parent_name, _, child = name.rpartition(".")
        parent = self.module.get_submodule(parent_name) if parent_name else self.module
        if not isinstance(parent, nn.Sequential):
            return None
        names = [n for n, _ in parent.named_children()]
        between = []
        for next_name in names[names.index(child) + 1:]:
            nxt = parent.get_submodule(next_name)
            if isinstance(nxt, nn.Linear):
                full = f"{parent_name}.{next_name}" if parent_name else next_name
                return Route(name, full, tuple(between))
            if not _is_elementwise(nxt):
                return None
            between.append(nxt)
        return None

    def _remove(self, route: Route, keep: torch.Tensor) -> None:
        producer = self.module.get_submodule(route.producer)
        consumer = self.module.get_submodule(route.consumer)
        removed = torch.ones(producer.weight.shape[0], dtype=torch.bool)
        removed[keep] = False

        def constant(x: torch.Tensor) -> torch.Tensor:  # what the removed, input-free channels emit
            for step in route.between:
                if not isinstance(step, nn.Dropout):  # identity in eval mode, where outputs are compared
                    x = step(x)
            return x

        # A fully masked row still emits act(bias): fold it into the consumer's bias (exact).
        fold_dead_channels(producer, consumer, removed.nonzero().flatten(), constant)
        self.module.set_submodule(route.producer, prune_linear(producer, keep, 0))
        self.module.set_submodule(route.consumer, prune_linear(consumer, keep, 1))

    def _record(self, routes: list[Route]) -> None:
        """Keep the per-layer records of a transformers config in step with the new shapes."""
        config = getattr(self.module, "config", None)
        for layer_list in {r.layer_list for r in routes if r.layer_list is not None and config is not None}:
            family = next(r.family for r in routes if r.layer_list == layer_list)
            table = FAMILIES[family]
            heads = int(getattr(config, table.config_heads))
            hidden = int(getattr(config, "hidden_size", None) or config.dim)
            record_shapes(config, self.module.get_submodule(layer_list), table, hidden // heads)
