"""Physical shrink: masks -> `ShrinkPlan` -> a smaller dense model that computes what the masked one did.

Plan, then apply: `plan_from_masks` decides which heads and FFN channels go (data, JSON-able);
`apply_plan` removes them with transformers' `prune_linear_layer` and fixes the head counts in one
place; `shrink` does both and checks the shrunk model against the masked one on a small batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace
from operator import attrgetter

import torch
from torch import nn
from torch.nn.utils import parametrize
from transformers.initialization import no_init_weights
from transformers.pytorch_utils import prune_linear_layer

from trimformer.masks import MaskDict, find_mask_param, remove_masks
from trimformer.plan import (  # noqa: F401  (re-exported: the public names live here too)
    EmptyAttention,
    LayerPlan,
    ShrinkPlan,
    layer_counts,
    layer_shapes,
    plan_from_masks,
)
from trimformer.structure import FamilyTable, ModelStructure, model_structure

# The FFN activation, relative to a layer: needed to fold a removed channel's constant output
# (act(bias) when its input row is all zero) into the next linear's bias.
FFN_ACTIVATION = {"bert": "intermediate.intermediate_act_fn", "distilbert": "ffn.activation"}


class ShrinkCheckError(RuntimeError):
    """The shrunk model does not compute what the masked model computed."""


def prune_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """`prune_linear_layer` keeping dtype and requires_grad."""
    # The new layer's random init is overwritten at once: skipping it halves the cost of a shrink and
    # leaves the caller's RNG stream alone. (no_init_weights swaps torch.nn.init's functions meanwhile.)
    with warnings.catch_warnings(), no_init_weights():
        warnings.simplefilter("ignore", UserWarning)  # Linear(0, n): "initializing zero-element tensors"
        new = prune_linear_layer(linear, index, dim)
    new = new.to(dtype=linear.weight.dtype)  # prune_linear_layer builds float32 layers
    new.weight.requires_grad_(linear.weight.requires_grad)
    if new.bias is not None:
        new.bias.requires_grad_(linear.bias.requires_grad)
    return new


@torch.no_grad()
def fold_dead_channels(producer: nn.Linear, consumer: nn.Linear, removed: torch.Tensor, act) -> None:
    """Add to `consumer.bias` what removed channels with an all-zero input row still contribute."""
    if consumer.bias is None or producer.bias is None or removed.numel() == 0:
        return
    removed = removed.to(producer.weight.device)  # plans are CPU indices; weights may be on a GPU
    dead = removed[producer.weight[removed].eq(0).all(dim=1)]
    if dead.numel():
        const = act(producer.bias[dead]) if act is not None else producer.bias[dead]
        consumer.bias += consumer.weight[:, dead] @ const.to(consumer.weight.dtype)


def _complement(kept: Sequence[int], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if list(kept) != sorted(set(kept)) or (kept and (kept[0] < 0 or kept[-1] >= n)):
        raise ValueError(f"kept indices must be sorted, unique and in [0, {n}): {list(kept)}")
    keep = torch.tensor(list(kept), dtype=torch.long)
    removed = torch.ones(n, dtype=torch.bool)
    removed[keep] = False
    return keep, removed.nonzero().flatten()


def _shrink_heads(layer: nn.Module, table: FamilyTable, head_dim: int, kept: Sequence[int]) -> None:
    n = layer_counts(layer, table, head_dim)[0]
    keep, removed = _complement(kept, n)
    if removed.numel() == 0:
        return
    rows = (keep[:, None] * head_dim + torch.arange(head_dim)).flatten()
    removed_rows = (removed[:, None] * head_dim + torch.arange(head_dim)).flatten()
    out = layer.get_submodule(table.attn_out)
    # A value row of zeros outputs its bias at every position (attention weights sum to 1).
    fold_dead_channels(layer.get_submodule(table.value), out, removed_rows, None)
    new_out = prune_linear(out, rows, 1)
    if keep.numel() == 0:
        inside = table.attn_out.startswith(table.attention + ".")
        out_name = table.attn_out[len(table.attention) + 1:] if inside else None
        empty = EmptyAttention(table.heads_attr, table.width_attrs, out_name, new_out if inside else None)
        layer.set_submodule(table.attention, empty)
        if not inside:
            layer.set_submodule(table.attn_out, new_out)
        return
    for name in (table.query, table.key, table.value):
        layer.set_submodule(name, prune_linear(layer.get_submodule(name), rows, 0))
    layer.set_submodule(table.attn_out, new_out)
    attention = layer.get_submodule(table.attention)
    setattr(attention, table.heads_attr, keep.numel())
    for attr in table.width_attrs:
        setattr(attention, attr, keep.numel() * head_dim)


def _shrink_ffn(layer: nn.Module, table: FamilyTable, family: str, kept: Sequence[int]) -> None:
    ffn_in, ffn_out = layer.get_submodule(table.ffn_in), layer.get_submodule(table.ffn_out)
    keep, removed = _complement(kept, ffn_in.weight.shape[0])
    if removed.numel() == 0:
        return
    act_name = FFN_ACTIVATION.get(family)
    fold_dead_channels(ffn_in, ffn_out, removed, attrgetter(act_name)(layer) if act_name else None)
    layer.set_submodule(table.ffn_in, prune_linear(ffn_in, keep, 0))
    layer.set_submodule(table.ffn_out, prune_linear(ffn_out, keep, 1))


def _layer_list_name(model: nn.Module, st: ModelStructure) -> str:
    base = getattr(model, "base_model_prefix", "")
    if base and isinstance(getattr(model, base, None), nn.Module):
        return f"{base}.{st.table.layers}"
    return st.table.layers


def record_shapes(config, layer_list: nn.ModuleList, table: FamilyTable, head_dim: int,
                  dropped: Sequence[int] = ()) -> None:
    """Write the per-layer shape into the config so a saved config.json describes the model."""
    origin = list(getattr(config, "trimformer_layer_origin", None) or [])
    if len(origin) != len(layer_list) + len(dropped):  # no record yet (or a stale one): count from here
        origin = list(range(len(layer_list) + len(dropped)))
    gone = sorted({*getattr(config, "trimformer_dropped_layers", []), *(origin[i] for i in dropped)})
    counts = [layer_counts(layer, table, head_dim) for layer in layer_list]
    config.trimformer_heads_per_layer = [h for h, _ in counts]
    config.trimformer_ffn_per_layer = [f for _, f in counts]
    config.trimformer_layer_origin = [o for i, o in enumerate(origin) if i not in set(dropped)]
    config.trimformer_dropped_layers = gone


def apply_plan(model: nn.Module, plan: ShrinkPlan) -> None:
    """Remove what `plan` does not keep, in place. The model must carry no parametrizations."""
    st = model_structure(model)
    want = (plan.family, plan.num_heads, plan.head_dim, len(plan.layers))
    have = (st.family, st.num_heads, st.head_dim, len(st.layers))
    if want != have:
        raise ValueError(f"plan (family, heads, head_dim, layers) {want} does not fit the model's {have}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("the model carries parametrizations (masks): bake or remove them before apply_plan")
    for lp, ls in zip(plan.layers, st.layers, strict=True):
        if not lp.dropped:
            layer = model.get_submodule(ls.prefix[:-1])
            _shrink_heads(layer, st.table, st.head_dim, lp.heads_kept)
            _shrink_ffn(layer, st.table, st.family, lp.ffn_kept)
    list_name = _layer_list_name(model, st)
    layer_list = model.get_submodule(list_name)
    dropped = [i for i, lp in enumerate(plan.layers) if lp.dropped]
    if dropped:
        layer_list = nn.ModuleList([m for i, m in enumerate(layer_list) if i not in set(dropped)])
        model.set_submodule(list_name, layer_list)
        for i, layer in enumerate(layer_list):
            for m in layer.modules():  # keeps cache indexing consistent for models that use it
                if hasattr(m, "layer_idx"):
                    m.layer_idx = i
        model.config.num_hidden_layers = len(layer_list)
        parent = model.get_submodule(list_name.rpartition(".")[0])
        if hasattr(parent, "n_layers"):
            parent.n_layers = len(layer_list)
    record_shapes(model.config, layer_list, st.table, st.head_dim, dropped)


def default_inputs(config, batch: int = 2, seq: int = 16) -> dict[str, torch.Tensor]:
    """A deterministic batch of token ids with one padded row (so attention masks matter)."""
    seq = min(seq, int(getattr(config, "max_position_embeddings", seq + 2)) - 2)
    g = torch.Generator().manual_seed(0)
    vocab = int(config.vocab_size)
    ids = torch.randint(min(5, vocab - 1), vocab, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@torch.no_grad()
def model_output(model: nn.Module, inputs) -> torch.Tensor:
    """The main output tensor (logits or last hidden state) in eval mode; the train flag is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        if isinstance(inputs, dict):
            out = model(**{k: v.to(device) for k, v in inputs.items()})
        elif isinstance(inputs, tuple | list):
            out = model(*(t.to(device) for t in inputs))
        else:
            out = model(inputs.to(device))
    finally:
        model.train(was_training)
    for key in ("logits", "last_hidden_state"):
        if getattr(out, key, None) is not None:
            return getattr(out, key)
    return out if isinstance(out, torch.Tensor) else out[0]


def compare_outputs(reference: torch.Tensor, actual: torch.Tensor, atol: float, what: str) -> None:
    """Raise ShrinkCheckError unless the two outputs agree within `atol`."""
    if reference.shape != actual.shape:
        raise ShrinkCheckError(f"{what}: output shape {tuple(actual.shape)} != {tuple(reference.shape)}")
    diff = float((reference.float() - actual.float()).abs().max()) if reference.numel() else 0.0
    if not diff <= atol:  # also catches NaN
        raise ShrinkCheckError(f"{what}: shrunk output differs from the masked output by {diff:.3g} "
                               f"(max abs), atol={atol:g}")


def attached_masks(model: nn.Module) -> MaskDict:
    """References (no copies) to the mask buffers attached to `model`."""
    out: MaskDict = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations:
                mask = find_mask_param(module, tensor_name)
                if mask is not None:
                    out.setdefault(name, {})[tensor_name] = mask.mask
    return out


@torch.no_grad()
def _zero_removed(model: nn.Module, plan: ShrinkPlan) -> None:
    """Zero whole removed units, so the reference is the model with only those units masked."""
    st = model_structure(model)
    for lp, ls in zip(plan.layers, st.layers, strict=True):
        n_heads, n_ffn = layer_counts(model.get_submodule(ls.prefix[:-1]), st.table, st.head_dim)
        heads = _complement(lp.heads_kept, n_heads)[1]
        rows = (heads[:, None] * st.head_dim + torch.arange(st.head_dim)).flatten()
        ffn = _complement(lp.ffn_kept, n_ffn)[1]
        for name, dim, index in ((ls.query, 0, rows), (ls.key, 0, rows), (ls.value, 0, rows),
                                 (ls.attn_out, 1, rows), (ls.ffn_in, 0, ffn), (ls.ffn_out, 1, ffn)):
            if index.numel():
                weight = model.get_submodule(name).weight
                weight.index_fill_(dim, index.to(weight.device), 0.0)


def shrink(model: nn.Module, masks: MaskDict | None = None, *, check: bool = True, example_inputs=None,
           restore_partial: bool = False, drop_empty_layers: bool = False, atol: float = 1e-5) -> ShrinkPlan:
    """Physically remove the heads and FFN channels that the masks remove entirely; in place.

    Masks come from `masks` and/or the model's mask parametrizations (multiplied where both exist).
    Units only partly masked keep their zeros, or with `restore_partial` get their original weights
    back (the check then compares against the model with only the removed units masked). With
    `drop_empty_layers`, a layer left with no heads is removed first (that changes the function on
    purpose) and the check covers the rest. Raises ShrinkCheckError when the outputs on
    `example_inputs` (default: `default_inputs`) differ by more than `atol`; the model is then left
    as shrunk, for inspection.
    """
    # Plans and index arithmetic live on the CPU; a model on an accelerator is shrunk there and moved back
    # (a few hundred MB at most for encoder models, and every shrunk Linear is new anyway).
    device = next(model.parameters()).device
    if device.type != "cpu":
        model.to("cpu")
        try:
            return shrink(model, masks, check=check, example_inputs=example_inputs, restore_partial=restore_partial,
                          drop_empty_layers=drop_empty_layers, atol=atol)
        finally:
            model.to(device)
    merged = attached_masks(model)
    for name, tensors in (masks or {}).items():
        for tensor_name, mask in tensors.items():
            shape = tuple(getattr(model.get_submodule(name), tensor_name).shape)
            if tuple(mask.shape) != shape:  # checked before anything changes; mul_ would broadcast
                raise ValueError(f"mask for {name}.{tensor_name} has shape {tuple(mask.shape)}, the tensor {shape}")
            old = merged.setdefault(name, {}).get(tensor_name)
            merged[name][tensor_name] = mask if old is None else old * mask.to(old.device)
    remove_masks(model, bake=not restore_partial)
    if masks and not restore_partial:
        with torch.no_grad():
            for name, tensors in masks.items():
                module = model.get_submodule(name)
                for tensor_name, mask in tensors.items():
                    target = getattr(module, tensor_name)
                    target.mul_(mask.to(target.device, target.dtype))
    plan = plan_from_masks(model, merged, drop_empty_layers)
    if restore_partial:
        _zero_removed(model, plan)
    rest = plan
    if any(lp.dropped for lp in plan.layers):
        # Drop first, keeping everything else, so the check below covers the rest of the plan.
        pairs = zip(plan.layers, layer_shapes(model), strict=True)
        keep_all = [LayerPlan(range(h), range(f), lp.dropped) for lp, (h, f) in pairs]
        apply_plan(model, replace(plan, layers=tuple(keep_all)))
        rest = replace(plan, layers=tuple(lp for lp in plan.layers if not lp.dropped))
    inputs = example_inputs if example_inputs is not None else default_inputs(model.config)
    reference = model_output(model, inputs) if check else None
    apply_plan(model, rest)
    if check:
        compare_outputs(reference, model_output(model, inputs), atol, "shrink")
    return plan

