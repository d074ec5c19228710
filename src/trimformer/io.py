"""Save and load pruned models: config.json + model.safetensors (+ plan.json, tokenizer), never pickle.

A pruned model has per-layer head counts and FFN widths that a transformers config cannot express,
so the config carries `trimformer_heads_per_layer` / `trimformer_ffn_per_layer`. Loading builds
the architecture at its dense dimensions, shrinks it to those shapes (which indices does not
matter: the weights are loaded next) and loads the safetensors strictly.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_model
from torch import nn
from torch.nn.utils import parametrize

from trimformer.atomic import plain_mode, write_atomic
from trimformer.shrink import LayerPlan, ShrinkPlan, apply_plan, layer_shapes
from trimformer.structure import family_of, model_structure

FORMAT = "trimformer-pruned"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, PLAN, META = "config.json", "model.safetensors", "plan.json", "trimformer.json"


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Atomic JSON write (`trimformer.atomic.write_atomic`)."""
    write_atomic(path, json.dumps(data, indent=2))


class PrunedModelError(ValueError):
    """A pruned-model folder that cannot be loaded as it is; the message names the file."""


def _config_dict(model: nn.Module) -> dict:
    """The config as saved: its diff from the defaults, the class, and the actual per-layer shape."""
    config = model.config.to_diff_dict()
    config["architectures"] = [type(model).__name__]
    if family_of(model) is not None:
        # Read the shapes off the modules, so the file describes the model even if a record is stale.
        counts = layer_shapes(model)
        config["trimformer_heads_per_layer"] = [h for h, _ in counts]
        config["trimformer_ffn_per_layer"] = [f for _, f in counts]
    return config


def save_pruned(model: nn.Module, folder: str | os.PathLike, tokenizer=None,
                plan: ShrinkPlan | None = None) -> Path:
    """Write a pruned (or dense) model to `folder` atomically: a temp folder, then a rename.

    An existing folder is replaced only if it is empty or was written by `save_pruned`.
    """
    folder = Path(folder)
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("the model carries parametrizations (masks): shrink it or remove_masks first")
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / META).is_file())):
        raise FileExistsError(f"{folder} exists and is not a trimformer model folder; not overwriting it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.tmp-"))
    try:
        (tmp / CONFIG).write_text(json.dumps(_config_dict(model), indent=2, sort_keys=True) + "\n")
        # save_model drops duplicate names of tied tensors (e.g. MLM decoder = word embeddings).
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        if plan is not None:
            (tmp / PLAN).write_text(plan.to_json() + "\n")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "trimformer_version": _version()}
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        for entry in [tmp, *tmp.rglob("*")]:  # safetensors writes its file owner-only
            plain_mode(entry, directory=entry.is_dir())
        if folder.exists():
            old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
            os.replace(folder, old / "model")
            try:
                os.replace(tmp, folder)
            except OSError:
                os.replace(old / "model", folder)  # put the previous model back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _version() -> str:
    from trimformer import __version__

    return __version__


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PrunedModelError(f"missing file: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PrunedModelError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise PrunedModelError(f"{path} does not hold a JSON object")
    return data


def build_architecture(folder: str | os.PathLike, dense: bool = False) -> nn.Module:
    """The architecture a saved folder's config.json describes, shrunk to the recorded per-layer shape
    (or left dense), with random weights: for timing and shape checks, where no weights are needed."""
    path = Path(folder) / CONFIG
    data = _read_json(path)
    try:
        config = transformers.AutoConfig.for_model(**data)
    except (KeyError, TypeError, ValueError) as err:
        raise PrunedModelError(f"{path} is not a usable transformers config: {err}") from err
    name = (data.get("architectures") or [None])[0]
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        cls = transformers.AutoModelForSequenceClassification
    auto = cls is transformers.AutoModelForSequenceClassification
    with torch.random.fork_rng():  # the throw-away random init must not move the caller's RNG
        model = cls.from_config(config) if auto else cls(config)
    heads, ffn = data.get("trimformer_heads_per_layer"), data.get("trimformer_ffn_per_layer")
    if dense or (heads is None and ffn is None):
        return model  # a dense model
    st = model_structure(model)
    n = len(st.layers)
    heads = heads if heads is not None else [st.num_heads] * n
    ffn = ffn if ffn is not None else [st.intermediate_size] * n
    ok = (len(heads) == n == len(ffn) and all(isinstance(h, int) and 0 <= h <= st.num_heads for h in heads)
          and all(isinstance(f, int) and 0 <= f <= st.intermediate_size for f in ffn))
    if not ok:
        raise PrunedModelError(f"{path}: per-layer records (heads {heads}, ffn {ffn}) do not fit {n} layers "
                               f"of at most {st.num_heads} heads and {st.intermediate_size} FFN channels")
    layers = tuple(LayerPlan(range(h), range(f)) for h, f in zip(heads, ffn, strict=True))
    apply_plan(model, ShrinkPlan(st.family, st.num_heads, st.head_dim, layers))
    return model


def load_pruned(folder: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a model written by `save_pruned` (eval mode). Raises PrunedModelError for bad folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PrunedModelError(f"pruned model folder not found: {folder}")
    if (folder / META).exists():
        meta = _read_json(folder / META)
        version = meta.get("version")
        if meta.get("format") != FORMAT or not isinstance(version, int) or version > FORMAT_VERSION:
            raise PrunedModelError(f"{folder / META}: unsupported format {meta.get('format')!r} version "
                                   f"{version!r} (this trimformer reads up to version {FORMAT_VERSION})")
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise PrunedModelError(f"missing file: {weights}")
    model = build_architecture(folder)
    _load_weights(model, weights)
    return model.to(device).eval()


def _load_weights(model: nn.Module, path: Path) -> None:
    expected = model.state_dict()
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            bad = [f"{k}: file {shapes[k]}, model {tuple(expected[k].shape)}"
                   for k in shapes if k in expected and shapes[k] != tuple(expected[k].shape)]
            if bad:
                more = " ..." if len(bad) > 5 else ""
                raise PrunedModelError(f"{path} does not match the shapes in config.json (wrong plan or "
                                       f"edited config?): {'; '.join(bad[:5])}{more}")
            unexpected = sorted(set(shapes) - set(expected))
            if unexpected:
                raise PrunedModelError(f"{path} holds tensors the model has no place for: {unexpected[:5]}")
            state = {k: f.get_tensor(k) for k in shapes}
    except SafetensorError as err:
        raise PrunedModelError(f"cannot read {path} (truncated or corrupt?): {err}") from err
    # A key absent from the file is fine only when it shares storage with one present (tied weights).
    present = {expected[k].data_ptr() for k in state}
    missing = [k for k in expected if k not in state and expected[k].data_ptr() not in present]
    if missing:
        raise PrunedModelError(f"{path} lacks tensors the model needs: {missing[:5]}")
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # keep the saved precision rather than the config's default
    model.load_state_dict(state, strict=False)
