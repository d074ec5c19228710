"""Knowledge distillation: the loss against hand-written formulas, teacher-logit caching and computation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tests.models import tiny_batch, tiny_bert, tiny_distilbert
from trimformer.distill import (
    DistillConfig,
    compute_teacher_logits,
    kd_loss,
    load_teacher_logits,
    save_teacher_logits,
)


def _logits(n: int = 6, c: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, c, (n,), generator=g)
    return torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), labels


def _kl_by_hand(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    p = torch.softmax(teacher / t, dim=-1)
    return (p * (p.log() - torch.log_softmax(student / t, dim=-1))).sum(-1).mean()


def test_loss_matches_formula() -> None:
    s, t, y = _logits()
    ce = -torch.log_softmax(s, dim=-1)[torch.arange(len(y)), y].mean()
    for alpha, temp in [(0.1, 2.0), (0.5, 1.0), (0.0, 4.0)]:
        expected = alpha * ce + (1 - alpha) * temp**2 * _kl_by_hand(s, t, temp)
        assert torch.allclose(kd_loss(s, t, y, alpha=alpha, temperature=temp), expected, atol=1e-6)
    # The brief's reference form: F.kl_div on probabilities, batchmean.
    ref = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean")
    assert torch.allclose(kd_loss(s, t, None, temperature=2.0), 4 * ref, atol=1e-6)


def test_alpha_one_is_cross_entropy_and_identical_logits_have_no_kd() -> None:
    s, t, y = _logits(seed=1)
    assert torch.allclose(kd_loss(s, t, y, alpha=1.0, temperature=3.0), F.cross_entropy(s, y))
    assert kd_loss(s, s.clone(), None, temperature=2.0).item() == pytest.approx(0.0, abs=1e-7)
    # labels None -> the KD term alone, at full weight whatever alpha is.
    assert torch.allclose(kd_loss(s, t, None, alpha=0.7), 4 * _kl_by_hand(s, t, 2.0), atol=1e-6)


def test_temperature_squared_scaling() -> None:
    s, t, _ = _logits(seed=2)
    for temp in (1.0, 2.0, 5.0):
        loss = kd_loss(s, t, None, alpha=0.0, temperature=temp)
        assert torch.allclose(loss / temp**2, _kl_by_hand(s, t, temp), atol=1e-6)


def test_regression_branch() -> None:
    g = torch.Generator().manual_seed(3)
    s, t, y = torch.randn(5, 1, generator=g), torch.randn(5, 1, generator=g), 5 * torch.rand(5, generator=g)
    expected = 0.3 * ((s[:, 0] - y) ** 2).mean() + 0.7 * ((s - t) ** 2).mean()
    assert torch.allclose(kd_loss(s, t, y, alpha=0.3, regression=True), expected, atol=1e-6)
    assert torch.allclose(kd_loss(s, t, None, regression=True), ((s - t) ** 2).mean())


def test_gradient_flows_to_student_only() -> None:
    s, t, y = _logits(seed=4)
    s.requires_grad_(True)
    t.requires_grad_(True)
    kd_loss(s, t, y).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_bad_settings() -> None:
    assert DistillConfig() == DistillConfig(alpha=0.1, temperature=2.0)
    with pytest.raises(ValueError, match="alpha"):
        DistillConfig(alpha=1.5)
    with pytest.raises(ValueError, match="temperature"):
        DistillConfig(temperature=0.0)
    s, t, y = _logits()
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(s, t[:, :2], y)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(s, t, y, temperature=-1.0)


def test_cache_round_trip_and_mismatch(tmp_path: Path) -> None:
    logits = torch.randn(7, 3)
    path = tmp_path / "cache" / "teacher_sst2_train.safetensors"
    save_teacher_logits(logits, path)
    save_teacher_logits(logits * 2, path)  # overwriting is atomic too
    assert torch.equal(load_teacher_logits(path, expected_rows=7), logits * 2)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    with pytest.raises(ValueError, match=r"teacher_sst2_train\.safetensors: .*7 rows, the dataset has 8"):
        load_teacher_logits(path, expected_rows=8)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, batch: dict[str, torch.Tensor]):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.batch.items()}


def _stack(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


@pytest.mark.parametrize("factory", [tiny_bert, tiny_distilbert])
def test_compute_teacher_logits_in_dataset_order(factory) -> None:
    teacher = factory()
    batch = tiny_batch(batch=5, seq=8)
    with torch.no_grad():
        direct = teacher(**batch).logits
    # Extra keys are dropped: labels (no loss needed), token_type_ids (DistilBERT takes none).
    extra = {"token_type_ids": torch.zeros_like(batch["input_ids"]), "labels": torch.arange(5) % 2}
    rows = _Rows({**batch, **extra})
    teacher.train()
    logits = compute_teacher_logits(teacher, rows, _stack, batch_size=2)
    assert teacher.training  # mode restored
    assert logits.shape == (5, 2) and logits.dtype == torch.float32 and not logits.requires_grad
    assert torch.allclose(logits, direct, atol=1e-5)
