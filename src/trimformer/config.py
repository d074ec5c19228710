"""The pruning config list, NNI-compatible, validated with one clear error per mistake.

A config list is a list of dicts. Each entry selects modules (``op_types``, ``op_names``,
``op_partial_names``, ``op_names_re``) and says how much to prune them (``sparsity`` /
``sparsity_per_layer`` for the same ratio in every selected layer, ``total_sparsity`` for one
budget shared across the selected layers), or removes modules from selection (``exclude``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

GranularitySpec = Literal["finegrained", "out_channel", "in_channel", "auto"] | tuple[int, int]


class ConfigError(ValueError):
    """A mistake in a pruning config list or a recipe."""


class ConfigEntry(BaseModel):
    """One validated entry of a config list."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_types: tuple[str, ...] | None = None
    op_names: tuple[str, ...] | None = None
    op_partial_names: tuple[str, ...] | None = None
    op_names_re: tuple[str, ...] | None = None
    exclude: bool = False
    sparsity: float | None = None  # NNI v2 name; same as sparsity_per_layer
    sparsity_per_layer: float | None = None
    total_sparsity: float | None = None
    max_sparsity_per_layer: float | None = None
    granularity: GranularitySpec | None = None

    @field_validator("sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer")
    @classmethod
    def _ratio(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

    @field_validator("granularity", mode="before")
    @classmethod
    def _granularity(cls, value: Any) -> Any:
        if isinstance(value, list):
            value = tuple(value)
        if isinstance(value, tuple):
            if len(value) != 2 or not all(isinstance(v, int) and (v > 0 or v == -1) for v in value):
                raise ValueError(f"a block granularity is two positive ints (or -1 for a whole dim), got {value}")
        return value

    @property
    def layer_sparsity(self) -> float | None:
        """The per-layer ratio, whichever of the two names gave it."""
        return self.sparsity if self.sparsity is not None else self.sparsity_per_layer

    @property
    def has_selector(self) -> bool:
        return any(v is not None for v in (self.op_types, self.op_names, self.op_partial_names, self.op_names_re))


def parse_config_list(config_list: list[dict[str, Any]] | list[ConfigEntry]) -> list[ConfigEntry]:
    """Validate a config list; raises ConfigError naming the entry and the problem."""
    if not isinstance(config_list, list | tuple) or not config_list:
        raise ConfigError("config_list must be a non-empty list of dicts")
    entries: list[ConfigEntry] = []
    for index, raw in enumerate(config_list):
        if isinstance(raw, ConfigEntry):
            entries.append(raw)
            continue
        if not isinstance(raw, dict):
            raise ConfigError(f"config_list[{index}] must be a dict, got {type(raw).__name__}")
        try:
            entry = ConfigEntry(**raw)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "entry"
            if first["type"] == "extra_forbidden":
                known = ", ".join(ConfigEntry.model_fields)
                raise ConfigError(
                    f"config_list[{index}]: unknown key {where!r} (known keys: {known})"
                ) from None
            raise ConfigError(f"config_list[{index}] {raw}: {where}: {first['msg']}") from None
        _check_entry(index, entry, raw)
        entries.append(entry)
    return entries


def _check_entry(index: int, entry: ConfigEntry, raw: dict[str, Any]) -> None:
    where = f"config_list[{index}] {raw}"
    if not entry.has_selector:
        raise ConfigError(f"{where}: selects nothing (give op_types, op_names, op_partial_names or op_names_re)")
    ratios = [k for k in ("sparsity", "sparsity_per_layer", "total_sparsity") if getattr(entry, k) is not None]
    if entry.exclude:
        if ratios:
            raise ConfigError(f"{where}: an exclude entry cannot also set {ratios[0]}")
        return
    if len(ratios) > 1:
        raise ConfigError(f"{where}: conflicting keys {ratios}: give one of sparsity/sparsity_per_layer/total_sparsity")
    if entry.max_sparsity_per_layer is not None and entry.total_sparsity is None:
        raise ConfigError(f"{where}: max_sparsity_per_layer only applies with total_sparsity")
    if (entry.max_sparsity_per_layer is not None and entry.total_sparsity is not None
            and entry.max_sparsity_per_layer < entry.total_sparsity):
        raise ConfigError(f"{where}: max_sparsity_per_layer {entry.max_sparsity_per_layer} is below "
                          f"total_sparsity {entry.total_sparsity}, which then cannot be reached")
