"""Training-state checkpoints, so a stage resumes bit-exactly after being killed.

A checkpoint is a folder holding ``state.safetensors`` (model, optimiser and RNG tensors, extra
tensors) and ``meta.json`` (step, every non-tensor value, a sha256 of the tensor file). Nothing is
pickled. It is written to a sibling temp folder, fsynced and renamed into place; a kill at any
moment leaves the old or the new checkpoint complete (the old one may sit in the ``.<name>.old``
sibling for a moment, and is found there).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

STATE = "state.safetensors"
META = "meta.json"
FORMAT = "trimformer-checkpoint"
FORMAT_VERSION = 1
_DROP = object()  # marks a value that cannot be stored and is left out


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model / optimiser / scheduler."""


@dataclass
class CheckpointState:
    """What `load_checkpoint` hands back besides the restored objects."""

    step: int
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    extra_meta: dict[str, Any] = field(default_factory=dict)


def _tensor(value: torch.Tensor) -> torch.Tensor:
    # A private copy: safetensors refuses tensors sharing storage (tied weights, views).
    return value.detach().cpu().clone().contiguous()


def _encode(obj: Any, key: str, tensors: dict[str, torch.Tensor], strict: bool) -> Any:
    """A JSON skeleton of `obj`: tensors go to `tensors[key]`, leaving ``{"__tensor__": key}``."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = _tensor(obj)
        return {"__tensor__": key}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list | tuple):
        items = [_encode(v, f"{key}.{i}", tensors, strict) for i, v in enumerate(obj)]
        items = [None if v is _DROP else v for v in items]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, dict) and all(isinstance(k, str | int) for k in obj):
        pairs = [(k, _encode(v, f"{key}.{k}", tensors, strict)) for k, v in obj.items()]
        pairs = [(k, v) for k, v in pairs if v is not _DROP]
        if all(isinstance(k, str) for k, _ in pairs):
            return dict(pairs)
        return {"__items__": [[k, v] for k, v in pairs]}  # int keys (optimiser state) survive JSON
    if strict:
        raise TypeError(f"cannot store {key!r} of type {type(obj).__name__} in a checkpoint")
    return _DROP


def _decode(obj: Any, tensors: dict[str, torch.Tensor], source: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise CheckpointError(f"{source}: tensor {obj['__tensor__']!r} is missing")
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, source) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {k: _decode(v, tensors, source) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors, source) for k, v in obj.items()}


def _sibling(folder: Path, kind: str) -> Path:
    return folder.parent / f".{folder.name}.{kind}"  # kind: "tmp" (being written) or "old" (being replaced)


def _complete(folder: Path) -> bool:
    # Files appear only through the final rename, and a file is unlinked whole, so presence means complete.
    return (folder / STATE).is_file() and (folder / META).is_file()


def _resolve(folder: Path) -> Path | None:
    """The complete checkpoint for `folder`: itself, or the old copy if a kill hit between the renames."""
    for candidate in (folder, _sibling(folder, "old")):
        if _complete(candidate):
            return candidate
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        if not path.is_dir():  # some platforms cannot fsync a directory; files must be durable
            raise
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def has_checkpoint(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a complete checkpoint (both files), possibly mid-replacement."""
    return _resolve(Path(folder)) is not None


def save_checkpoint(folder: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    scheduler: Any | None, step: int, extra_tensors: dict[str, torch.Tensor] | None = None,
                    extra_meta: dict[str, Any] | None = None) -> Path:
    """Atomically write the training state to `folder`, replacing any previous checkpoint there."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"model state {key!r} is a {type(value).__name__}, not a tensor")
        tensors[f"model.{key}"] = _tensor(value)
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "step": int(step),
        "optimizer": None if optimizer is None else _encode(optimizer.state_dict(), "optim", tensors, True),
        # Plain-function lr_lambdas come out as None; anything else not JSON-able is left out.
        "scheduler": None if scheduler is None else _encode(scheduler.state_dict(), "sched", tensors, False),
        "rng": {"numpy": [np_name, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
                "python": _encode(random.getstate(), "rng.python", tensors, True)},
        "extra_meta": extra_meta or {},
    }
    tensors["rng.torch"] = torch.get_rng_state()
    tensors.update({f"extra.{k}": _tensor(v) for k, v in (extra_tensors or {}).items()})
    json.dumps(meta)  # fail on a non-JSON extra_meta before touching the disk

    _recover(folder)
    if folder.exists() and not _complete(folder) and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not a checkpoint folder; not overwriting it")
    tmp, old = _sibling(folder, "tmp"), _sibling(folder, "old")
    shutil.rmtree(tmp, ignore_errors=True)  # left by a save that was killed midway
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / STATE), metadata={"format": FORMAT})
    meta["sha256"] = _sha256(tmp / STATE)
    (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
    for path in (tmp / STATE, tmp / META, tmp):
        _fsync(path)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)  # a finished save's leftover: `folder` is complete
        os.replace(folder, old)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _recover(folder: Path) -> None:
    """Put the old checkpoint back if a kill left it only in the ``.old`` sibling."""
    if _complete(folder) or not _complete(_sibling(folder, "old")):
        return
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
    if not folder.exists():
        os.replace(_sibling(folder, "old"), folder)
        _fsync(folder.parent)


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a trimformer checkpoint")
    if meta.get("version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format version {meta.get('version')}, expected {FORMAT_VERSION}")
    if not isinstance(meta.get("step"), int) or not isinstance(meta.get("sha256"), str):
        raise CheckpointError(f"{path} lacks a step or a sha256")
    return meta


def _read_state(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    if _sha256(path) != sha256:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match {path.parent / META}")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise CheckpointError(f"cannot read {path}: {err}") from err


def _check_model(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, shape mismatches {shapes[:5]}")


def load_checkpoint(folder: str | os.PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any | None = None, restore_rng: bool = True) -> CheckpointState:
    """Restore model (strictly), optimiser, scheduler and RNG states from `folder`.

    Everything is checked before anything is restored, so a bad checkpoint leaves the objects as they were.
    Mask parametrizations must already be registered on `model` (their masks are not model state).
    """
    path = _resolve(Path(folder))
    if path is None:
        raise CheckpointError(f"no complete checkpoint in {folder} (needs {STATE} and {META})")
    meta = _read_meta(path / META)
    tensors = _read_state(path / STATE, meta["sha256"])
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    _check_model(model, model_state, path / STATE)
    optim_state = sched_state = None
    if optimizer is not None:
        if meta.get("optimizer") is None:
            raise CheckpointError(f"{path / META} holds no optimizer state")
        optim_state = _decode(meta["optimizer"], tensors, path / STATE)
        saved = [len(g["params"]) for g in optim_state["param_groups"]]
        if saved != [len(g["params"]) for g in optimizer.param_groups]:
            raise CheckpointError(f"{path / META}: optimizer param groups of {saved} parameters do not fit")
    if scheduler is not None:
        if meta.get("scheduler") is None:
            raise CheckpointError(f"{path / META} holds no scheduler state")
        sched_state = _decode(meta["scheduler"], tensors, path / STATE)
    if restore_rng and "rng.torch" not in tensors:
        raise CheckpointError(f"{path / STATE} holds no RNG state")

    model.load_state_dict(model_state, strict=True)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optim_state)
        except (KeyError, ValueError) as err:
            raise CheckpointError(f"{path / META}: optimizer state does not fit: {err}") from err
    if scheduler is not None:
        scheduler.load_state_dict(sched_state)
    if restore_rng:
        torch.set_rng_state(tensors["rng.torch"])
        name, keys, pos, has_gauss, gauss = meta["rng"]["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        random.setstate(_decode(meta["rng"]["python"], tensors, path / META))
    extras = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
    return CheckpointState(step=meta["step"], extra_tensors=extras, extra_meta=meta.get("extra_meta") or {})
