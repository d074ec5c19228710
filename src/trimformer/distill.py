"""Knowledge distillation: the KD loss (KL at temperature T mixed with the task loss), teacher-logit caching.

Teacher logits are computed once per dataset and cached as safetensors, so the distillation stages
run the teacher zero times per epoch instead of once per step.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from trimformer.atomic import replaced

__all__ = ["DistillConfig", "compute_teacher_logits", "hidden_loss", "kd_loss", "load_teacher_logits",
           "save_teacher_logits"]

_CACHE_KEY = "teacher_logits"


def _check_mix(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@dataclass(frozen=True)
class DistillConfig:
    """Distillation settings: `alpha` weighs the task loss, 1 - alpha the KD term; `temperature` softens."""

    alpha: float = 0.1
    temperature: float = 2.0

    def __post_init__(self) -> None:
        _check_mix(self.alpha, self.temperature)


def hidden_loss(student_hidden: tuple[torch.Tensor, ...], teacher_hidden: tuple[torch.Tensor, ...],
                attention_mask: torch.Tensor) -> torch.Tensor:
    """Layer-wise distillation: MSE between the student's and the teacher's hidden states after
    every layer (embeddings excluded), over real tokens only, averaged over layers. Pruning heads
    and FFN channels keeps the hidden size and the layer count, so the states match one to one."""
    if len(student_hidden) != len(teacher_hidden):
        raise ValueError(f"student has {len(student_hidden) - 1} layers, teacher {len(teacher_hidden) - 1}")
    tokens = attention_mask.bool()
    terms = [F.mse_loss(s.float()[tokens], t.detach().float()[tokens])
             for s, t in zip(student_hidden[1:], teacher_hidden[1:], strict=True)]
    return torch.stack(terms).mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            alpha: float = 0.1, temperature: float = 2.0, regression: bool = False) -> torch.Tensor:
    """Distillation loss, a scalar.

    Classification: alpha * CE(student, labels) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)),
    KL averaged over the batch. Regression (one output): alpha * MSE(student, labels)
    + (1 - alpha) * MSE(student, teacher). With `labels` None the loss is the KD term alone (weight 1).
    """
    _check_mix(alpha, temperature)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    # Losses in float32: softmax/KL in half precision loses the small probabilities KD is about.
    student = student_logits.float()
    teacher = teacher_logits.detach().float().to(student.device)
    if regression:
        if student.ndim == 2 and student.shape[-1] == 1:
            student, teacher = student[:, 0], teacher[:, 0]
        if student.ndim != 1:
            raise ValueError(f"regression logits must be [N] or [N, 1], got {tuple(student_logits.shape)}")
        kd = F.mse_loss(student, teacher)
        if labels is None:
            return kd
        return alpha * F.mse_loss(student, labels.float().reshape(-1)) + (1.0 - alpha) * kd
    if student.ndim != 2:
        raise ValueError(f"classification logits must be [N, num_labels], got {tuple(student_logits.shape)}")
    # log_target=True is the same KL(softmax(t/T) || softmax(s/T)), but exactly 0 for equal logits.
    kl = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                  reduction="batchmean", log_target=True)
    kd = temperature**2 * kl  # T^2 keeps the gradient scale of the soft term independent of T
    if labels is None:
        return kd
    return alpha * F.cross_entropy(student, labels.long().reshape(-1)) + (1.0 - alpha) * kd


def _model_inputs(model: nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
    # Keep only inputs the forward names explicitly: a DistilBERT teacher takes no token_type_ids, and
    # labels / teacher_logits would only make the model compute a loss we do not need.
    named = inspect.signature(model.forward).parameters
    return {k: v for k, v in batch.items() if k in named and k not in ("labels", "kwargs")}


@torch.no_grad()
def compute_teacher_logits(teacher: nn.Module, dataset: Dataset, collate_fn: Any, batch_size: int = 64,
                           device: str | torch.device = "cpu") -> torch.Tensor:
    """The teacher's logits for every example, in dataset order: float32 [N, num_labels] on the CPU.

    Runs in eval mode without gradients; the teacher is moved to `device` and its train/eval mode restored.
    """
    if len(dataset) == 0:
        raise ValueError("compute_teacher_logits: the dataset is empty")
    was_training = teacher.training
    teacher.to(device).eval()
    try:
        chunks = []
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn):
            inputs = {k: v.to(device) for k, v in _model_inputs(teacher, batch).items()}
            out = teacher(**inputs)
            logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out
            chunks.append(logits.float().cpu())
    finally:
        teacher.train(was_training)
    return torch.cat(chunks)


def save_teacher_logits(logits: torch.Tensor, path: str | os.PathLike) -> None:
    """Write logits to a safetensors file atomically (temp file in the same folder, then os.replace)."""
    with replaced(path) as tmp:  # readers see the old file or the new one, never half of one
        save_file({_CACHE_KEY: logits.detach().cpu().contiguous()}, str(tmp))


def load_teacher_logits(path: str | os.PathLike, expected_rows: int | None = None) -> torch.Tensor:
    """Read logits saved by `save_teacher_logits`; a row count other than `expected_rows` is a ValueError."""
    tensors = load_file(str(path))
    if _CACHE_KEY not in tensors:
        raise ValueError(f"{path}: no {_CACHE_KEY!r} tensor (found {sorted(tensors)}); "
                         "not a teacher-logit cache")
    logits = tensors[_CACHE_KEY]
    if expected_rows is not None and logits.shape[0] != expected_rows:
        raise ValueError(f"{path}: cached teacher logits have {logits.shape[0]} rows, the dataset has "
                         f"{expected_rows}; delete the file to recompute it")
    return logits
