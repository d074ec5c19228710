"""Per-architecture tables: where the heads and FFN channels of each layer live.

No graph tracing: each supported family is a small explicit table of module names (the
nn_pruning way). A head is the rows of q, k, v plus the columns of the attention output
projection; an FFN channel is a row of the first FFN linear plus a column of the second.
To add a family, add one `FamilyTable` to `FAMILIES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class FamilyTable:
    """Module-name suffixes (relative to one layer) and the attributes that hold head counts."""

    layers: str  # path of the layer ModuleList, relative to the base model
    attention: str  # the module that owns the head count attributes
    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str
    heads_attr: str  # attribute on `attention` holding the number of heads
    width_attrs: tuple[str, ...]  # attributes on `attention` holding heads * head_dim
    config_heads: str  # config key for heads
    config_ffn: str  # config key for FFN width


FAMILIES: dict[str, FamilyTable] = {
    "bert": FamilyTable(
        layers="encoder.layer",
        attention="attention.self",
        query="attention.self.query",
        key="attention.self.key",
        value="attention.self.value",
        attn_out="attention.output.dense",
        ffn_in="intermediate.dense",
        ffn_out="output.dense",
        heads_attr="num_attention_heads",
        width_attrs=("all_head_size",),
        config_heads="num_attention_heads",
        config_ffn="intermediate_size",
    ),
    "distilbert": FamilyTable(
        layers="transformer.layer",
        attention="attention",
        query="attention.q_lin",
        key="attention.k_lin",
        value="attention.v_lin",
        attn_out="attention.out_lin",
        ffn_in="ffn.lin1",
        ffn_out="ffn.lin2",
        heads_attr="n_heads",
        width_attrs=("dim",),
        config_heads="n_heads",
        config_ffn="hidden_dim",
    ),
}
# Families whose layers are laid out exactly like BERT's.
FAMILY_ALIASES = {"roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert"}


@dataclass(frozen=True)
class LayerStructure:
    """Full module names of one transformer layer's prunable parts."""

    index: int
    prefix: str  # e.g. "bert.encoder.layer.3."
    attention: str
    query: str
    key: str
    value: str
    attn_out: str
    ffn_in: str
    ffn_out: str

    @property
    def attention_linears(self) -> tuple[str, str, str, str]:
        return (self.query, self.key, self.value, self.attn_out)


@dataclass(frozen=True)
class ModelStructure:
    """What a pruner and a shrinker need to know about a model."""

    family: str
    table: FamilyTable
    num_heads: int  # heads per layer in the original (dense) config
    head_dim: int
    hidden_size: int
    intermediate_size: int
    layers: tuple[LayerStructure, ...]

    def layer_of(self, module_name: str) -> LayerStructure | None:
        """The layer a module belongs to, or None."""
        for layer in self.layers:
            if module_name.startswith(layer.prefix):
                return layer
        return None

    def role_of(self, module_name: str) -> str | None:
        """'query' | 'key' | 'value' | 'attn_out' | 'ffn_in' | 'ffn_out' | None."""
        layer = self.layer_of(module_name)
        if layer is None:
            return None
        for role in ("query", "key", "value", "attn_out", "ffn_in", "ffn_out"):
            if getattr(layer, role) == module_name:
                return role
        return None


def family_of(model: nn.Module) -> str | None:
    """The table name for a model, or None when trimformer has no table for it."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return None
    model_type = FAMILY_ALIASES.get(model_type, model_type)
    return model_type if model_type in FAMILIES else None


def model_structure(model: nn.Module) -> ModelStructure:
    """Build the structure of a transformers model; raises ValueError for unknown families."""
    family = family_of(model)
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        supported = sorted([*FAMILIES, *FAMILY_ALIASES])
        raise ValueError(f"no structure table for model type {model_type!r}; supported: {supported}")
    table = FAMILIES[family]
    config = model.config
    prefix = ""
    base_prefix = getattr(model, "base_model_prefix", "")
    if base_prefix and hasattr(model, base_prefix) and isinstance(getattr(model, base_prefix), nn.Module):
        prefix = base_prefix + "."
    layer_list = model.get_submodule(prefix + table.layers)
    num_heads = int(getattr(config, table.config_heads))
    hidden = int(config.hidden_size if hasattr(config, "hidden_size") else config.dim)
    layers = []
    for i in range(len(layer_list)):
        p = f"{prefix}{table.layers}.{i}."
        layers.append(
            LayerStructure(
                index=i,
                prefix=p,
                attention=p + table.attention,
                query=p + table.query,
                key=p + table.key,
                value=p + table.value,
                attn_out=p + table.attn_out,
                ffn_in=p + table.ffn_in,
                ffn_out=p + table.ffn_out,
            )
        )
    return ModelStructure(
        family=family,
        table=table,
        num_heads=num_heads,
        head_dim=hidden // num_heads,
        hidden_size=hidden,
        intermediate_size=int(getattr(config, table.config_ffn)),
        layers=tuple(layers),
    )
