"""Shrink plans: which heads and FFN channels each layer keeps, decided from masks (data, JSON-able).

A head goes only when all of its q, k, v rows and its output-projection columns are masked; an
FFN channel goes when its row of the first linear (and, where masked, its column of the second)
is masked. `EmptyAttention` stands in for an attention block left with no heads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from trimformer.masks import MaskDict
from trimformer.structure import FamilyTable, model_structure


@dataclass(frozen=True)
class LayerPlan:
    """Kept head and FFN-channel indices of one layer, relative to its modules when planned."""

    heads_kept: tuple[int, ...]
    ffn_kept: tuple[int, ...]
    dropped: bool = False

    def __post_init__(self):
        object.__setattr__(self, "heads_kept", tuple(int(i) for i in self.heads_kept))
        object.__setattr__(self, "ffn_kept", tuple(int(i) for i in self.ffn_kept))


@dataclass(frozen=True)
class ShrinkPlan:
    """What to keep in every layer; `num_heads`/`head_dim` are the dense model's."""

    family: str
    num_heads: int
    head_dim: int
    layers: tuple[LayerPlan, ...]

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))

    def heads_per_layer(self) -> list[int]:
        """Head counts of the layers that remain after applying the plan."""
        return [len(lp.heads_kept) for lp in self.layers if not lp.dropped]

    def ffn_per_layer(self) -> list[int]:
        """FFN widths of the layers that remain after applying the plan."""
        return [len(lp.ffn_kept) for lp in self.layers if not lp.dropped]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = [{**lp, "heads_kept": list(lp["heads_kept"]), "ffn_kept": list(lp["ffn_kept"])}
                       for lp in d["layers"]]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ShrinkPlan:
        try:
            layers = tuple(LayerPlan(lp["heads_kept"], lp["ffn_kept"], bool(lp.get("dropped", False)))
                           for lp in d["layers"])
            return cls(str(d["family"]), int(d["num_heads"]), int(d["head_dim"]), layers)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not a ShrinkPlan: {err!r}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> ShrinkPlan:
        return cls.from_dict(json.loads(text))


class EmptyAttention(nn.Module):
    """Stands in for a self-attention with no heads left: its output has zero width.

    BERT's attention output projection (outside this module) then becomes Linear(0, hidden), whose
    output is its bias, which is what the masked model computes. For DistilBERT the projection
    lives inside the attention module, so it is kept here under its own name (`out`).
    """

    def __init__(self, heads_attr: str, width_attrs: Sequence[str], out_name: str | None = None,
                 out: nn.Linear | None = None):
        super().__init__()
        for attr in (heads_attr, *width_attrs):
            setattr(self, attr, 0)
        self.out_name = out_name
        if out_name is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, None]:
        empty = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.out_name is not None:
            return getattr(self, self.out_name)(empty), None
        return empty, None


def layer_counts(layer: nn.Module, table: FamilyTable, head_dim: int) -> tuple[int, int]:
    """(heads, FFN width) of one layer as its modules are now."""
    if isinstance(layer.get_submodule(table.attention), EmptyAttention):
        heads = 0
    else:
        heads = layer.get_submodule(table.query).weight.shape[0] // head_dim
    return heads, layer.get_submodule(table.ffn_in).weight.shape[0]


def layer_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(heads, FFN width) of every layer of a supported transformers model, as its modules are now."""
    st = model_structure(model)
    return [layer_counts(model.get_submodule(ls.prefix[:-1]), st.table, st.head_dim) for ls in st.layers]


def _alive(masks: MaskDict, name: str, dim: int, units: int) -> torch.Tensor | None:
    """Per unit along `dim` (rows 0 / columns 1): does the weight mask keep anything? None: no mask."""
    mask = masks.get(name, {}).get("weight")
    if mask is None:
        return None
    mask = mask.ne(0)
    per_index = mask.any(dim=1 - dim)
    if per_index.numel() % units:
        raise ValueError(f"mask of {name}: {per_index.numel()} entries on dim {dim}, not k * {units}")
    return per_index.view(units, -1).any(dim=1).cpu()


def plan_from_masks(model: nn.Module, masks: MaskDict, drop_empty_layers: bool = False) -> ShrinkPlan:
    """Which heads/channels the masks remove entirely (a unit with no mask at all is kept).

    A head goes when its q, k, v rows and its attention-output columns are all masked; an FFN
    channel goes when every mask present on it (the first linear's row, the second's column) is zero.
    """
    st = model_structure(model)
    layers = []
    for ls in st.layers:
        n_heads, n_ffn = layer_counts(model.get_submodule(ls.prefix[:-1]), st.table, st.head_dim)
        heads = list(range(n_heads))
        if n_heads:
            alive = [_alive(masks, ls.query, 0, n_heads), _alive(masks, ls.key, 0, n_heads),
                     _alive(masks, ls.value, 0, n_heads), _alive(masks, ls.attn_out, 1, n_heads)]
            if all(a is not None for a in alive):
                heads = torch.stack(alive).any(0).nonzero().flatten().tolist()
        present = [a for a in (_alive(masks, ls.ffn_in, 0, n_ffn), _alive(masks, ls.ffn_out, 1, n_ffn))
                   if a is not None]
        ffn = torch.stack(present).any(0).nonzero().flatten().tolist() if present else list(range(n_ffn))
        layers.append(LayerPlan(heads, ffn, drop_empty_layers and not heads))
    return ShrinkPlan(st.family, st.num_heads, st.head_dim, tuple(layers))


def whole_head_masks(model: nn.Module, layer, keep_heads: torch.Tensor, head_dim: int) -> MaskDict:
    """Masks that keep or remove whole heads of one layer: q, k, v rows and output columns together."""
    rows = keep_heads.float().repeat_interleave(head_dim)
    out = {name: {"weight": rows[:, None].expand_as(model.get_submodule(name).weight).clone()}
           for name in (layer.query, layer.key, layer.value)}
    out[layer.attn_out] = {"weight": rows[None, :].expand_as(model.get_submodule(layer.attn_out).weight).clone()}
    return out


def value_rule_masks(model: nn.Module, masks: MaskDict) -> MaskDict:
    """The tutorial's head rule as whole-head masks: a head goes when its value rows are all masked
    (its query, key and output weights go with it); every other head is kept whole."""
    structure, out = model_structure(model), {}
    for layer in structure.layers:
        gone = masks[layer.value]["weight"].reshape(structure.num_heads, -1).sum(-1) == 0
        out.update(whole_head_masks(model, layer, ~gone, structure.head_dim))
    return out
