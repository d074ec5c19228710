"""NNI-named pruners, thin configurations of the engine, so tutorial code moves over by
changing imports: ``from trimformer import MovementPruner, TaylorFOWeightPruner, TorchEvaluator``.

``compress()`` returns ``(model, masks)`` with ``masks[module]["weight"]`` a 0/1 tensor of the
weight's shape; the masks stay attached (as parametrizations) until ``unwrap_model()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trimformer.masks import MaskDict, remove_masks
from trimformer.movement import MovementEngine
from trimformer.pruners import Pruner


def trace(obj: Any) -> Any:
    """Stand-in for ``nni.trace``: trimformer needs no tracing, so this returns `obj` unchanged."""
    return obj


class TorchEvaluator:
    """Runs the user's training function exactly as NNI calls it:
    ``training_func(model, optimizer, criterion, lr_scheduler, max_steps, max_epochs)``."""

    def __init__(self, training_func: Callable[..., Any], optimizers: torch.optim.Optimizer,
                 criterion: Callable[..., torch.Tensor], lr_schedulers: Any = None,
                 dummy_input: Any = None, evaluating_func: Callable[[nn.Module], Any] | None = None):
        if isinstance(optimizers, list | tuple):
            if len(optimizers) != 1:
                raise ValueError("TorchEvaluator supports exactly one optimizer")
            optimizers = optimizers[0]
        self.training_func = training_func
        self.optimizer = optimizers
        self.criterion = criterion
        self.lr_scheduler = lr_schedulers[0] if isinstance(lr_schedulers, list | tuple) else lr_schedulers
        self.dummy_input = dummy_input
        self.evaluating_func = evaluating_func

    def train(self, model: nn.Module, max_steps: int | None = None, max_epochs: int | None = None,
              extra_loss: Callable[[], torch.Tensor] | None = None) -> None:
        """Call the training function; `extra_loss` (a regulariser) is added to the criterion's result."""
        criterion = self.criterion
        if extra_loss is not None:
            base = self.criterion

            def criterion(*args: Any, **kwargs: Any) -> torch.Tensor:
                return base(*args, **kwargs) + extra_loss()

        self.training_func(model, self.optimizer, criterion, self.lr_scheduler, max_steps, max_epochs)

    def evaluate(self, model: nn.Module) -> Any:
        return self.evaluating_func(model) if self.evaluating_func is not None else None


class _Preset:
    """Shared NNI surface: compress(), show_pruned_weights(), unwrap_model()."""

    pruner: Pruner

    @property
    def bound_model(self) -> nn.Module:
        return self.pruner.model

    def show_pruned_weights(self, print_fn: Callable[[str], None] = print) -> None:
        """Per-layer table: shape, kept weights, sparsity."""
        self.pruner.show_pruned_weights(print_fn)

    def unwrap_model(self) -> None:
        """Drop the masks without baking them (NNI's ``_unwrap_model``)."""
        remove_masks(self.pruner.model, bake=False)

    _unwrap_model = unwrap_model

    def get_masks(self) -> MaskDict:
        return self.pruner.masks


class LevelPruner(_Preset):
    """Fine-grained, by weight magnitude, one shot."""

    def __init__(self, model: nn.Module, config_list: list, mode: str = "normal", **_: Any):
        self.pruner = Pruner(model, config_list, importance="l1", granularity="finegrained")

    def compress(self) -> tuple[nn.Module, MaskDict]:
        return self.pruner.model, self.pruner.update_masks(1.0)


class L1NormPruner(LevelPruner):
    """Whole output channels (rows of a Linear weight) with the smallest L1 norm."""

    importance = "l1"

    def __init__(self, model: nn.Module, config_list: list, mode: str = "normal", dummy_input: Any = None,
                 granularity: Any = "out_channel", **_: Any):
        self.pruner = Pruner(model, config_list, importance=self.importance, granularity=granularity)


class L2NormPruner(L1NormPruner):
    """Whole output channels with the smallest L2 norm."""

    importance = "l2"


class TaylorFOWeightPruner(_Preset):
    """Output channels with the smallest accumulated |w * dL/dw|, gathered over
    `training_steps` steps of the evaluator's training function."""

    def __init__(self, model: nn.Module, config_list: list, evaluator: TorchEvaluator, training_steps: int,
                 mode: str = "normal", dummy_input: Any = None, granularity: Any = "out_channel", **_: Any):
        if training_steps <= 0:
            raise ValueError(f"training_steps must be positive, got {training_steps}")
        self.pruner = Pruner(model, config_list, importance="taylor", granularity=granularity)
        self.evaluator = evaluator
        self.training_steps = training_steps

    def compress(self) -> tuple[nn.Module, MaskDict]:
        taylor = self.pruner.taylor
        handle = self.evaluator.optimizer.register_step_pre_hook(lambda *_: taylor.accumulate())
        try:
            self.evaluator.train(self.pruner.model, max_steps=self.training_steps)
        finally:
            handle.remove()
        masks = self.pruner.update_masks(1.0)
        return self.pruner.model, masks


class MovementPruner(_Preset):
    """NNI's MovementPruner: scores learned during `training_steps` of the evaluator's training
    function; `movement_mode` 'hard' (top-k on a cubic schedule) or 'soft' (threshold + L1
    penalty weighted by `regular_scale`; the config's sparsity is then the score threshold, as in
    NNI); `sparse_granularity` 'auto' (per-head blocks on attention, channels on the FFN) or
    'finegrained'. Scores train with Adam at 1e-2, as in NNI."""

    def __init__(self, model: nn.Module, config_list: list, evaluator: TorchEvaluator, training_epochs: int,
                 training_steps: int | None = None, warm_up_step: int = 0, cool_down_beginning_step: int = 0,
                 regular_scale: float = 1.0, movement_mode: str = "hard", sparse_granularity: str = "finegrained",
                 score_lr: float = 1e-2, score_optimizer: str = "adam"):
        if sparse_granularity not in ("auto", "finegrained"):
            raise ValueError(f"sparse_granularity must be 'auto' or 'finegrained', got {sparse_granularity!r}")
        if cool_down_beginning_step < warm_up_step:
            raise ValueError("cool_down_beginning_step must not be before warm_up_step")
        # As NNI: scores train with Adam at 1e-2, and soft mode reads the config's sparsity as the
        # score threshold (ramped on the cubic schedule), not as a target.
        thresholds = {e.get("sparsity", e.get("sparsity_per_layer", 0.0)) for e in config_list if not e.get("exclude")}
        if movement_mode == "soft" and len(thresholds) > 1:
            raise ValueError(f"soft movement takes one threshold (the config's sparsity), got {sorted(thresholds)}")
        self.engine = MovementEngine(model, config_list, warm_up_step, cool_down_beginning_step,
                                     regular_scale=regular_scale, movement_mode=movement_mode,
                                     granularity=sparse_granularity, score_lr=score_lr,
                                     score_optimizer=score_optimizer,
                                     threshold=float(next(iter(thresholds), 0.0)) if movement_mode == "soft" else 0.0)
        self.pruner = self.engine.pruner
        self.evaluator = evaluator
        self.training_epochs = training_epochs
        self.training_steps = training_steps

    def compress(self) -> tuple[nn.Module, MaskDict]:
        handle = self.evaluator.optimizer.register_step_post_hook(lambda *_: self.engine.step())
        try:
            self.evaluator.train(self.pruner.model, max_steps=self.training_steps, max_epochs=self.training_epochs,
                                 extra_loss=self.engine.regularization_loss)
        finally:
            handle.remove()
        return self.pruner.model, self.pruner.masks
