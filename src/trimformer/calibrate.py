"""Output-bias calibration: give a pruned student the teacher's class rates back.

A student that lost capacity drifts toward the class prior it was trained on: on CoLA and MRPC the
pruned MiniLMs rank examples nearly as well as before a stage, yet call almost every one of them the
majority class (MCC near 0, F1 at the all-positive value). Shifting the classifier's bias fixes the
threshold without touching what the model ranks. The shift b minimises the mean
KL(softmax(teacher) || softmax(student + b)) over training rows: convex in b, and at its optimum the
student's mean predicted distribution equals the teacher's. Only training rows and the cached
teacher logits are used, never dev labels; one inference pass, no weight is trained.
Regression heads are left alone (Pearson and Spearman do not change under a shift).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Subset

from trimformer.train import predict

__all__ = ["calibrate_output_bias", "fit_logit_shift", "output_linear"]


def output_linear(model: nn.Module) -> nn.Linear:
    """The classifier's last linear: the last `nn.Linear` with one output per label."""
    num_labels = model.config.num_labels
    found = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
    if not found or found[-1].bias is None:
        raise ValueError(f"no output linear with {num_labels} outputs and a bias in {type(model).__name__}")
    return found[-1]


def fit_logit_shift(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The per-class shift b minimising mean KL(softmax(teacher) || softmax(student + b)); sums to 0."""
    if student_logits.shape != teacher_logits.shape or student_logits.ndim != 2:
        raise ValueError(f"logits must be [rows, classes] of one shape, got {tuple(student_logits.shape)} "
                         f"and {tuple(teacher_logits.shape)}")
    student, target = student_logits.double(), F.softmax(teacher_logits.double(), dim=-1)
    shift = torch.zeros(student.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([shift], max_iter=100, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.kl_div(F.log_softmax(student + shift, dim=-1), target, reduction="batchmean")
        loss.backward()
        return loss

    optimizer.step(closure)
    shift = shift.detach()
    return (shift - shift.mean()).float()  # softmax ignores a common offset: keep the bias centred


@torch.no_grad()
def calibrate_output_bias(model: nn.Module, dataset: Dataset, collate: Callable, teacher_logits: torch.Tensor,
                          rows: int, batch_size: int = 128, device: torch.device | str = "cpu") -> torch.Tensor:
    """Add to the output bias the shift that matches the teacher's mean prediction on the first
    `rows` training rows (`teacher_logits` row-aligned with `dataset`); returns the shift."""
    rows = min(rows, len(dataset))
    if rows < 1 or teacher_logits.shape[0] < rows:
        raise ValueError(f"calibration needs training rows with teacher logits: {rows} rows, "
                         f"{teacher_logits.shape[0]} teacher logits")
    logits, _ = predict(model, Subset(dataset, range(rows)), collate, batch_size, device)
    with torch.enable_grad():
        shift = fit_logit_shift(torch.as_tensor(logits), teacher_logits[:rows].float().cpu())
    bias = output_linear(model).bias
    bias += shift.to(bias.device, bias.dtype)
    return shift
