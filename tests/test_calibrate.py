"""Output-bias calibration: the student's mean prediction is moved onto the teacher's."""

from __future__ import annotations

import pytest
import torch

from tests.models import tiny_bert, tiny_distilbert, tiny_roberta
from trimformer.calibrate import calibrate_output_bias, fit_logit_shift, output_linear
from trimformer.train import predict


def test_shift_undoes_a_constant_offset_and_matches_the_mean_prediction():
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(500, 3, generator=g) * 2
    offset = torch.tensor([1.5, -0.5, 0.25])
    shift = fit_logit_shift(teacher + offset, teacher)
    assert torch.allclose(shift, -(offset - offset.mean()), atol=1e-4)
    noisy = teacher + offset + 0.5 * torch.randn(500, 3, generator=g)  # not a pure offset: the means still match
    shift = fit_logit_shift(noisy, teacher)
    assert torch.allclose(torch.softmax(noisy + shift, -1).mean(0), torch.softmax(teacher, -1).mean(0), atol=1e-5)
    assert abs(float(shift.sum())) < 1e-5


def test_shift_refuses_logits_of_other_shapes():
    with pytest.raises(ValueError, match="logits must be"):
        fit_logit_shift(torch.zeros(4, 2), torch.zeros(4, 3))


@pytest.mark.parametrize("make, name", [(tiny_bert, "classifier"), (tiny_distilbert, "classifier"),
                                        (tiny_roberta, "classifier.out_proj")])
def test_output_linear_is_the_classifier(make, name):
    model = make()
    assert output_linear(model) is model.get_submodule(name)


def rows(n: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(5, 99, (8,), generator=g), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def collate(batch: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([row[k] for row in batch]) for k in batch[0]}


def test_calibration_moves_the_model_onto_the_teachers_class_rates():
    model, data = tiny_bert(), rows(40)
    own, _ = predict(model, data, collate, 16)
    teacher = torch.as_tensor(own) + torch.tensor([0.0, 3.0])  # a teacher that says class 1 far more often
    before = output_linear(model).bias.clone()
    shift = calibrate_output_bias(model, data, collate, teacher, rows=40, batch_size=16)
    assert shift[1] - shift[0] == pytest.approx(3.0, abs=1e-3)
    assert torch.allclose(output_linear(model).bias, before + shift)
    after, _ = predict(model, data, collate, 16)
    assert torch.allclose(torch.softmax(torch.as_tensor(after), -1).mean(0), torch.softmax(teacher, -1).mean(0),
                          atol=1e-4)
    with pytest.raises(ValueError, match="teacher logits"):
        calibrate_output_bias(model, data, collate, teacher[:10], rows=40)
