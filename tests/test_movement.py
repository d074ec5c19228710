"""Movement pruning and the NNI tutorial's own calls, unchanged except imports."""

from __future__ import annotations

import functools

import pytest
import torch
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR
from transformers import BatchEncoding

from tests.models import tiny_bert
from trimformer import MovementPruner, TaylorFOWeightPruner, TorchEvaluator, trace
from trimformer.structure import model_structure

LAYERS = 2


def make_batches(n: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 99, (4, 12), generator=g)
        labels = (ids[:, 1] > 50).long()  # learnable signal
        out.append(BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}))
    return out


# --- the tutorial's training function, as written there (minus logging/saving) ----------------
def training(model, optimizer, criterion, lr_scheduler=None, max_steps=None, max_epochs=None,
             train_dataloader=None, distillation=False, teacher_model=None, distil_func=None, device="cpu"):
    model.train()
    current_step = 0
    total_epochs = max_steps // len(train_dataloader) + 1 if max_steps else max_epochs if max_epochs else 3
    total_steps = max_steps if max_steps else total_epochs * len(train_dataloader)
    for _ in range(total_epochs):
        for batch in train_dataloader:
            if current_step >= total_steps:
                return
            batch.to(device)
            outputs = model(**batch)
            loss = outputs.loss
            loss = criterion(loss, None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if lr_scheduler:
                lr_scheduler.step()
            current_step += 1


def fake_criterion(loss, _):
    return loss


def run_tutorial_movement(regular_scale: float, seed: int = 0, sparsity: float = 0.1, **extra):
    torch.manual_seed(seed)
    model = tiny_bert(num_layers=LAYERS, seed=seed)
    train_dataloader = make_batches()
    total_epochs, steps_per_epoch = 4, len(train_dataloader)
    total_steps = total_epochs * steps_per_epoch
    warmup_steps, cooldown_steps = steps_per_epoch, steps_per_epoch
    movement_training = functools.partial(training, train_dataloader=train_dataloader)
    traced_optimizer = trace(Adam)(model.parameters(), lr=3e-5, eps=1e-8)

    def lr_lambda(current_step: int):
        if current_step < warmup_steps:
            return float(current_step) / warmup_steps
        return max(0.0, float(total_steps - current_step) / float(total_steps - warmup_steps))

    traced_scheduler = trace(LambdaLR)(traced_optimizer, lr_lambda)
    evaluator = TorchEvaluator(movement_training, traced_optimizer, fake_criterion, traced_scheduler)
    config_list = [{
        "op_types": ["Linear"],
        "op_partial_names": [f"bert.encoder.layer.{i}.attention" for i in range(LAYERS)],
        "sparsity": sparsity,
    }]
    pruner = MovementPruner(model=model, config_list=config_list, evaluator=evaluator,
                            training_epochs=total_epochs, training_steps=total_steps, warm_up_step=warmup_steps,
                            cool_down_beginning_step=total_steps - cooldown_steps, regular_scale=regular_scale,
                            movement_mode="soft", sparse_granularity="auto", **extra)
    _, attention_masks = pruner.compress()
    return model, pruner, attention_masks


def overall_sparsity(masks):
    kept = sum(float(m["weight"].sum()) for m in masks.values())
    total = sum(m["weight"].numel() for m in masks.values())
    return 1 - kept / total


def test_tutorial_movement_calls_work_and_masks_are_head_blocks(capsys):
    model, pruner, masks = run_tutorial_movement(regular_scale=10)
    assert len(masks) == 4 * LAYERS
    hd = model_structure(model).head_dim
    for name, m in masks.items():
        w = m["weight"]
        assert w.shape == model.get_submodule(name).weight.shape
        grid = w.reshape(w.shape[0] // hd, hd, w.shape[1] // hd, hd).sum(dim=(1, 3))
        assert torch.all((grid == 0) | (grid == hd * hd)), name
    # The tutorial reads the value mask per head like this:
    value_mask = masks["bert.encoder.layer.0.attention.self.value"]["weight"]
    assert value_mask.reshape(4, -1).sum(-1).shape == (4,)
    pruner.show_pruned_weights()
    assert "attention.self.query" in capsys.readouterr().out


def test_soft_movement_larger_regular_scale_is_sparser():
    # Plain SGD scores (the accumulated movement) and threshold 0: the tiny random model's gradients
    # are small, so small scales already matter here. (NNI's Adam at 1e-2 with threshold 0.1 masks
    # nearly all of this tiny model within its 32 steps.)
    sparsities = [overall_sparsity(run_tutorial_movement(regular_scale=s, sparsity=0.0, score_optimizer="sgd",
                                                         score_lr=1.0)[2]) for s in (0.0, 1e-4, 1e-3)]
    assert sparsities[0] < sparsities[1] < sparsities[2] < 1.0


def test_nni_movement_defaults_adam_scores_and_sparsity_as_soft_threshold():
    _, pruner, _ = run_tutorial_movement(regular_scale=1.0)
    engine = pruner.engine
    assert isinstance(engine.optimizer, torch.optim.Adam) and engine.optimizer.param_groups[0]["lr"] == 1e-2
    assert engine.threshold == 0.1  # the tutorial's config 'sparsity' in soft mode
    for param in engine.params.values():  # masks froze at the cool-down step, from the scores then
        assert set(param.mask.unique().tolist()) <= {0.0, 1.0}


def test_hard_movement_reaches_exact_sparsity_on_schedule():
    model = tiny_bert(num_layers=LAYERS)
    batches = make_batches()
    optimizer = Adam(model.parameters(), lr=1e-3)
    evaluator = TorchEvaluator(functools.partial(training, train_dataloader=batches), optimizer, fake_criterion)
    config = [{"op_types": ["Linear"], "op_partial_names": ["bert.encoder"], "sparsity": 0.75}]
    pruner = MovementPruner(model, config, evaluator, training_epochs=2, training_steps=16, warm_up_step=2,
                            cool_down_beginning_step=10, movement_mode="hard", sparse_granularity="finegrained")
    _, masks = pruner.compress()
    for m in masks.values():
        assert 1 - float(m["weight"].mean()) == pytest.approx(0.75, abs=1e-6)


def test_tutorial_taylor_call_on_op_names():
    model = tiny_bert(num_layers=LAYERS)
    batches = make_batches()
    optimizer = trace(Adam)(model.parameters(), lr=3e-5, eps=1e-8)
    evaluator = TorchEvaluator(functools.partial(training, train_dataloader=batches), optimizer, fake_criterion)
    ffn_config_list = [{"op_names": [f"bert.encoder.layer.{i}.intermediate.dense"], "sparsity": 0.25}
                       for i in range(LAYERS)]
    taylor_pruner_steps = 3
    pruner = TaylorFOWeightPruner(model, ffn_config_list, evaluator, taylor_pruner_steps)
    _, ffn_masks = pruner.compress()
    assert set(ffn_masks) == {f"bert.encoder.layer.{i}.intermediate.dense" for i in range(LAYERS)}
    for m in ffn_masks.values():
        rows = m["weight"].sum(1)
        assert int((rows == 0).sum()) == 16  # a quarter of 64 channels, whole rows
    pruner._unwrap_model()
    assert not hasattr(model.bert.encoder.layer[0].intermediate.dense, "parametrizations")


def train_with_engine(model, engine, batches, lr: float, after_backward=None) -> None:
    """AdamW steps on the model, the engine stepping its scores and masks after each
    (`after_backward()` sees the gradients before either step uses them)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for batch in batches:
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        if after_backward is not None:
            after_backward()
        optimizer.step()
        engine.step()


def _soft_engine_masks(threshold: float, score_optimizer: str = "sgd", score_lr: float = 1.0):
    from trimformer.movement import MovementEngine

    model = tiny_bert(LAYERS).train()
    names = [n for layer in model_structure(model).layers for n in (layer.query, layer.key, layer.value)]
    engine = MovementEngine(model, [{"op_names": names, "sparsity": 0.1}], warm_up_step=2, cool_down_beginning_step=6,
                            regular_scale=0.0, movement_mode="soft", granularity="auto", score_lr=score_lr,
                            score_optimizer=score_optimizer, threshold=threshold)
    train_with_engine(model, engine, make_batches(8), lr=1e-3)
    return engine


@pytest.mark.parametrize("score_optimizer,score_lr", [("sgd", 1.0), ("adam", 1e-2)])
def test_soft_threshold_masks_exactly_the_blocks_scoring_at_or_below_it(score_optimizer, score_lr):
    engine = _soft_engine_masks(threshold=0.005, score_optimizer=score_optimizer, score_lr=score_lr)
    kept = {n: int((p.scores > 0.005).sum()) for n, p in engine.params.items()}
    frozen_at = {n: int(p.mask.sum()) // (8 * 8) for n, p in engine.params.items()}  # 8 x 8 head blocks
    # Masks froze at the cool-down step (6); scores moved for 2 more steps, so compare there and loosely.
    assert sum(frozen_at.values()) < 3 * LAYERS * 16  # some blocks went
    assert abs(sum(frozen_at.values()) - sum(kept.values())) <= 0.25 * 3 * LAYERS * 16
    loose = _soft_engine_masks(threshold=0.0, score_optimizer=score_optimizer, score_lr=score_lr)
    assert sum(int(p.mask.sum()) for p in loose.params.values()) >= sum(int(p.mask.sum())
                                                                        for p in engine.params.values())
    assert isinstance(engine.optimizer, torch.optim.Adam if score_optimizer == "adam" else torch.optim.SGD)


def test_unknown_score_optimizer_is_named():
    with pytest.raises(ValueError, match="score_optimizer"):
        _soft_engine_masks(threshold=0.0, score_optimizer="rmsprop")


def test_value_rule_removes_a_head_whose_value_rows_are_masked():
    from trimformer.plan import value_rule_masks
    from trimformer.shrink import shrink

    model = tiny_bert(LAYERS)  # 4 heads of 8
    st = model_structure(model)
    ones = lambda m: torch.ones_like(model.get_submodule(m).weight)  # noqa: E731
    masks = {n: {"weight": ones(n)} for layer in st.layers for n in (layer.query, layer.key, layer.value)}
    layer0 = st.layers[0]
    masks[layer0.value]["weight"][8:16] = 0  # head 1: value rows all masked, q and k untouched
    masks[layer0.value]["weight"][16:20, :8] = 0  # head 2: partly masked value -> kept
    plan = shrink(model, value_rule_masks(model, masks))
    assert list(plan.layers[0].heads_kept) == [0, 2, 3] and list(plan.layers[1].heads_kept) == [0, 1, 2, 3]


def _hard_taylor_engine(model, warm_up: int = 2, cool_down: int = 6, taylor_decay: float = 1.0,
                        taylor_blocks: str = "all", fade_steps: int = 0):
    from trimformer.movement import MovementEngine

    names = [n for layer in model_structure(model).layers for n in layer.attention_linears]
    return MovementEngine(model, [{"op_names": names, "sparsity": 0.25}], warm_up_step=warm_up,
                          cool_down_beginning_step=cool_down, movement_mode="hard", granularity="auto",
                          head_units=True, score="taylor", taylor_decay=taylor_decay, taylor_blocks=taylor_blocks,
                          fade_steps=fade_steps)


def test_taylor_head_scores_add_the_absolute_block_gradient_each_step():
    model = tiny_bert(LAYERS).train()
    engine = _hard_taylor_engine(model)
    expected = {n: torch.zeros_like(p.scores) for n, p in engine.params.items()}

    def add_abs_grads():
        for n, p in engine.params.items():
            expected[n] += p.scores.grad.abs()  # movement would subtract the signed gradient instead

    train_with_engine(model, engine, make_batches(4), lr=1e-3, after_backward=add_abs_grads)
    for n, p in engine.params.items():
        assert torch.allclose(p.scores.detach(), expected[n], atol=1e-7)
        assert p.scores.grad is None  # consumed, so the next step does not count it twice
    assert any(float(e.sum()) > 0 for e in expected.values())


def test_taylor_decay_is_an_exponential_moving_sum():
    model = tiny_bert(LAYERS).train()
    engine = _hard_taylor_engine(model, taylor_decay=0.5)
    expected = {n: torch.zeros_like(p.scores) for n, p in engine.params.items()}
    plain_sum = {n: torch.zeros_like(p.scores) for n, p in engine.params.items()}

    def decay_then_add():
        for n, p in engine.params.items():
            expected[n] = 0.5 * expected[n] + p.scores.grad.abs()
            plain_sum[n] += p.scores.grad.abs()

    train_with_engine(model, engine, make_batches(4), lr=1e-3, after_backward=decay_then_add)
    for n, p in engine.params.items():
        assert torch.allclose(p.scores.detach(), expected[n], atol=1e-7)
    assert not all(torch.allclose(expected[n], plain_sum[n]) for n in expected)  # the decay did something


def test_taylor_output_blocks_alone_score_each_head_by_its_output_projection():
    model = tiny_bert(LAYERS).train()
    engine = _hard_taylor_engine(model, taylor_blocks="output")
    outputs = {layer.attn_out for layer in model_structure(model).layers}
    expected = {n: torch.zeros_like(engine.params[n].scores) for n in outputs}

    def add_output_blocks():
        for n in outputs:
            expected[n] += engine.params[n].scores.grad.abs()

    train_with_engine(model, engine, make_batches(4), lr=1e-3, after_backward=add_output_blocks)
    for n, p in engine.params.items():
        if n in outputs:
            assert torch.allclose(p.scores.detach(), expected[n], atol=1e-7) and float(p.scores.detach().sum()) > 0
        else:  # q, k and v add nothing to a head's score
            assert float(p.scores.detach().abs().sum()) == 0 and p.scores.grad is None
    with pytest.raises(ValueError, match="taylor_blocks"):
        _hard_taylor_engine(model, taylor_blocks="query")


def test_taylor_prunes_the_head_that_does_nothing():
    model = tiny_bert(LAYERS).train()  # 4 heads of 8 per layer
    layer = model_structure(model).layers[0]
    modules = dict(model.named_modules())
    with torch.no_grad():  # head 2 of layer 0: all of its weights zero, so no loss depends on them
        for name in (layer.query, layer.key, layer.value):
            modules[name].weight[16:24].zero_()
            modules[name].bias[16:24].zero_()
        modules[layer.attn_out].weight[:, 16:24].zero_()
    engine = _hard_taylor_engine(model, warm_up=1, cool_down=100)
    train_with_engine(model, engine, make_batches(6), lr=1e-4)
    masks = engine.pruner.compute_masks(1.0)
    rows_kept = masks[layer.value]["weight"][:, 0].reshape(4, 8)[:, 0]
    assert rows_kept.tolist() == [1, 1, 0, 1]


def test_taylor_scores_refuse_soft_mode():
    from trimformer.movement import MovementEngine

    model = tiny_bert(LAYERS)
    names = [n for layer in model_structure(model).layers for n in (layer.query, layer.key, layer.value)]
    with pytest.raises(ValueError, match="taylor"):
        MovementEngine(model, [{"op_names": names, "sparsity": 0.1}], warm_up_step=0, cool_down_beginning_step=1,
                       movement_mode="soft", score="taylor")


def test_fading_heads_step_down_one_third_a_step_and_end_binary():
    """fade_steps=3: a head that leaves the mask goes 1 -> 2/3 -> 1/3 -> 0, never faster; after the
    cool-down the kept heads stay whole and the others finish fading, so the stage ends on 0/1 masks
    at the configured sparsity."""
    model = tiny_bert(LAYERS).train()
    engine = _hard_taylor_engine(model, warm_up=2, cool_down=6, fade_steps=3)
    history = []
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for batch in make_batches(10):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
        engine.step()
        history.append({n: p.mask.clone() for n, p in engine.params.items()})
    fractional = set()
    for before, after in zip(history, history[1:], strict=False):
        for name in after:
            assert bool((after[name] >= before[name] - 1 / 3 - 1e-6).all())  # never faster than the fade
            fractional |= {round(float(v), 4) for v in after[name].unique() if 0 < float(v) < 1}
    assert fractional <= {0.3333, 0.6667} and fractional  # it did fade, in thirds
    for mask in history[-1].values():
        assert set(mask.unique().tolist()) <= {0.0, 1.0}
    kept = sum(float(m.sum()) for m in history[-1].values())
    assert kept == pytest.approx(0.75 * sum(m.numel() for m in history[-1].values()))


def test_fade_steps_need_hard_mode():
    from trimformer.movement import MovementEngine

    model = tiny_bert(LAYERS)
    names = [n for layer in model_structure(model).layers for n in layer.attention_linears]
    with pytest.raises(ValueError, match="fade_steps"):
        MovementEngine(model, [{"op_names": names, "sparsity": 0.25}], 2, 6, movement_mode="soft", fade_steps=2)
