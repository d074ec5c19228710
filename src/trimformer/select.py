"""Config list + model -> targets. The only place a `Target` is made.

Matching follows NNI: within an entry, names (exact, partial, regex) are a union, and
``op_types`` filters by class name. Later exclude entries remove modules. Every name,
partial name and regex must match something, so a typo fails loudly instead of pruning
nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from trimformer.config import ConfigEntry, ConfigError, GranularitySpec, parse_config_list

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
# NNI's 'default' op type stands for the usual prunable layers.
TYPE_ALIASES = {"default": "Linear"}


@dataclass(frozen=True)
class Target:
    """One module to prune and how."""

    name: str
    module: nn.Module
    sparsity: float | None  # per-layer ratio, or None when `group` shares a budget
    group: int | None  # index of the config entry whose total_sparsity is shared
    total_sparsity: float | None
    max_sparsity: float | None
    granularity: GranularitySpec | None


def _matches(entry: ConfigEntry, index: int, modules: dict[str, nn.Module]) -> list[str]:
    names: set[str] | None = None
    if entry.op_names is not None or entry.op_partial_names is not None or entry.op_names_re is not None:
        names = set()
        for name in entry.op_names or ():
            if name not in modules:
                raise ConfigError(f"config_list[{index}]: op_names entry {name!r} matches no module in the model")
            names.add(name)
        for part in entry.op_partial_names or ():
            hits = [n for n in modules if n and part in n]
            if not hits:
                raise ConfigError(f"config_list[{index}]: op_partial_names entry {part!r} matches no module")
            names.update(hits)
        for pattern in entry.op_names_re or ():
            try:
                regex = re.compile(pattern)
            except re.error as err:
                raise ConfigError(f"config_list[{index}]: op_names_re {pattern!r} is not a regex: {err}") from None
            hits = [n for n in modules if n and regex.fullmatch(n)]
            if not hits:
                raise ConfigError(f"config_list[{index}]: op_names_re entry {pattern!r} matches no module")
            names.update(hits)
    candidates = sorted(names) if names is not None else [n for n in modules if n]
    if entry.op_types is not None:
        types = {TYPE_ALIASES.get(t, t) for t in entry.op_types}
        candidates = [n for n in candidates if type(modules[n]).__name__ in types]
        if not candidates:
            raise ConfigError(f"config_list[{index}]: op_types {list(entry.op_types)} match no selected module")
    return candidates


def select_targets(model: nn.Module, config_list: list) -> list[Target]:
    """Resolve a config list against a model; raises ConfigError with the offending entry."""
    entries = parse_config_list(config_list)
    modules = dict(model.named_modules())
    chosen: dict[str, tuple[int, ConfigEntry]] = {}
    for index, entry in enumerate(entries):
        names = _matches(entry, index, modules)
        if entry.exclude:
            for name in names:
                chosen.pop(name, None)
            continue
        for name in names:
            module = modules[name]
            # Names selecting a container pick the prunable layers inside it only when op_types asks;
            # a non-prunable module chosen explicitly by type or exact name is an error.
            if not isinstance(module, PRUNABLE_TYPES):
                explicit = entry.op_types is not None or name in (entry.op_names or ())
                if explicit:
                    raise ConfigError(
                        f"config_list[{index}]: {name!r} is a {type(module).__name__}, which cannot be pruned "
                        f"(prunable: {[t.__name__ for t in PRUNABLE_TYPES]})"
                    )
                continue
            if name in chosen and chosen[name][0] != index:
                previous, prev_entry = chosen[name]
                if prev_entry.model_dump(include=_SETTINGS) != entry.model_dump(include=_SETTINGS):
                    raise ConfigError(
                        f"config_list[{index}] and config_list[{previous}] both select {name!r} "
                        "with different settings"
                    )
            chosen[name] = (index, entry)
    if not chosen:
        raise ConfigError("the config list selects no prunable module (all excluded or none matched)")
    order = {name: i for i, name in enumerate(modules)}
    targets = []
    for name, (index, entry) in sorted(chosen.items(), key=lambda kv: order[kv[0]]):
        shared = entry.total_sparsity is not None
        targets.append(
            Target(
                name=name,
                module=modules[name],
                sparsity=None if shared else entry.layer_sparsity,
                group=index if shared else None,
                total_sparsity=entry.total_sparsity,
                max_sparsity=entry.max_sparsity_per_layer,
                granularity=entry.granularity,
            )
        )
    return targets


_SETTINGS = {"sparsity", "sparsity_per_layer", "total_sparsity", "max_sparsity_per_layer", "granularity"}
