"""Movement pruning with learned per-block scores (Sanh et al. 2020), or the same masks and
schedule ranked by accumulated first-order Taylor importance; built on `pruners.Pruner`."""

from __future__ import annotations

import torch
from torch import nn

from trimformer import dist
from trimformer.config import GranularitySpec
from trimformer.pruners import Pruner, remove_masks_of
from trimformer.schedule import Cubic
from trimformer.scoring import MovementMask
from trimformer.select import Target


class MovementEngine:
    """Movement pruning with learned per-block scores (Sanh et al. 2020).

    hard: keep the top (1 - s_t) blocks by score, s_t on NNI's cubic schedule.
    soft: keep blocks whose score is above `threshold` (ramped from 0 on the cubic schedule; NNI's
    soft mode reads the config's sparsity as this threshold, 0.1 in the tutorial); an L1 penalty on
    sigmoid(scores), weighted by `regular_scale` (ramped the same way), pushes scores down, so a
    larger `regular_scale` prunes more. Masks are all ones before `warm_up_step` and frozen from
    `cool_down_beginning_step` on. Hard mode with `fade_steps` > 0: a block leaving the mask steps
    down by 1 / fade_steps a step instead of going at once (so the kept share trails the schedule by
    up to that many steps); after the cool-down the kept set is fixed and the rest finish fading.

    Scores train with plain SGD at `score_lr` by default, so a score is the accumulated movement;
    `score_optimizer="adam"` (lr 1e-2 in NNI) is what the NNI tutorial ran.

    `score="taylor"` (hard mode) keeps the same masks and schedule but ranks blocks by first-order
    Taylor importance instead: each step adds |sum over the block of w * dL/dw| (the loss's
    first-order sensitivity to scaling that block), so a block matters whether its weights would
    move in or out; with whole-head units a head's score is the sum of its four blocks' (q, k and v
    rows, output columns), ranked raw across layers under global allocation. `taylor_decay` < 1
    multiplies the sums by it before each step's add (an exponential moving sum); `taylor_blocks=
    "output"` scores a head by its output block alone. `score_lr` and
    `score_optimizer` are then unused. Movement is a signed sum that needs many steps away from a
    converged fine-tune to mean anything; a one-epoch stage on a few thousand rows has ~100."""

    def __init__(self, model: nn.Module, config_list: list, warm_up_step: int, cool_down_beginning_step: int,
                 regular_scale: float = 1.0, movement_mode: str = "hard", granularity: GranularitySpec = "finegrained",
                 score_lr: float = 1.0, head_units: bool = False, score_optimizer: str = "sgd",
                 threshold: float = 0.0, head_allocation: str = "layer", score: str = "movement",
                 taylor_decay: float = 1.0, taylor_blocks: str = "all", fade_steps: int = 0):
        if movement_mode not in ("hard", "soft"):
            raise ValueError(f"movement_mode must be 'hard' or 'soft', got {movement_mode!r}")
        if score_optimizer not in ("sgd", "adam"):
            raise ValueError(f"score_optimizer must be 'sgd' or 'adam', got {score_optimizer!r}")
        if score not in ("movement", "taylor") or (score == "taylor" and movement_mode != "hard"):
            raise ValueError(f"score must be 'movement', or 'taylor' with hard mode; got {score!r} in {movement_mode}")
        if not 0.0 < taylor_decay <= 1.0:
            raise ValueError(f"taylor_decay must be in (0, 1], got {taylor_decay}")
        output_ok = score == "taylor" and head_units
        if taylor_blocks not in ("all", "output") or (taylor_blocks == "output" and not output_ok):
            raise ValueError("taylor_blocks must be 'all', or 'output' with taylor scores on whole heads; "
                             f"got {taylor_blocks!r}")
        if fade_steps < 0 or (fade_steps and movement_mode != "hard"):
            raise ValueError(f"fade_steps must be >= 0, and only in hard mode; got {fade_steps} in {movement_mode}")
        # > 0: a block leaving the mask fades out linearly over this many steps rather than at once,
        # so the rest of the model takes its share over while it still contributes.
        self.fade_steps = int(fade_steps)
        self.score = score
        self.taylor_blocks = taylor_blocks
        self.taylor_decay = float(taylor_decay)
        self.threshold = float(threshold)
        self.pruner = Pruner(model, config_list, importance=self._scores, granularity=granularity,
                             head_units=head_units, head_allocation=head_allocation)
        self.mode = movement_mode
        self.regular_scale = float(regular_scale)
        self.ramp = Cubic(warm_up_step, cool_down_beginning_step)
        self.warm_up, self.cool_down = warm_up_step, cool_down_beginning_step
        self.params: dict[str, MovementMask] = {}
        for t in self.pruner.targets:
            weight = t.module.weight
            mask = torch.ones_like(weight, dtype=torch.float32)
            remove_masks_of(t.module)
            param = MovementMask(mask, self.pruner.blocks[t.name])
            torch.nn.utils.parametrize.register_parametrization(t.module, "weight", param)
            self.params[t.name] = param
        # taylor_blocks="output": only the output projections' blocks gather scores; a head's q, k and
        # v scores stay 0, so its score is its output block's alone.
        outputs = {layer.attn_out for layer in self.pruner.structure.layers} if taylor_blocks == "output" else None
        self.scored = [p for n, p in self.params.items() if outputs is None or n in outputs]
        # Plain SGD: a score is then the accumulated movement -sum(w * dL/dw) minus the penalty's pull,
        # so their sizes compete (Adam would normalise the movement signal away).
        scores = [p.scores for p in self.params.values()]
        self.optimizer: torch.optim.Optimizer | None = None  # taylor: scores are sums, not trained
        if score == "movement":
            self.optimizer = (torch.optim.SGD(scores, lr=score_lr) if score_optimizer == "sgd"
                              else torch.optim.Adam(scores, lr=score_lr))
        self.step_count = 0

    def _scores(self, target: Target) -> torch.Tensor:
        # Elementwise view of the block scores, so the shared allocator can rank them.
        param = self.params[target.name]
        rows, cols = param.block
        return param.scores.detach().repeat_interleave(rows, 0).repeat_interleave(cols, 1) / (rows * cols)

    def regularization_loss(self) -> torch.Tensor:
        """Soft mode's penalty (0 in hard mode and during warm-up); add it to the task loss."""
        if self.mode != "soft" or self.step_count < self.warm_up:
            return torch.zeros(())
        scale = self.regular_scale * self.ramp(self.step_count)
        terms = [torch.sigmoid(p.scores).mean() for p in self.params.values()]
        return scale * torch.stack(terms).mean()

    def step(self) -> None:
        """After the model's optimiser step: update scores, then masks."""
        dist.average_grads(p.scores for p in self.params.values())  # same scores on every rank
        if self.optimizer is None:  # taylor
            with torch.no_grad():
                for param in self.scored:
                    if param.scores.grad is not None:
                        # decay < 1: an exponential moving sum, so the ranking follows the model as
                        # heads go (re-estimated importance) rather than the dense model's early steps.
                        param.scores.mul_(self.taylor_decay).add_(param.scores.grad.abs())
                for param in self.params.values():
                    param.scores.grad = None
        else:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.step_count += 1
        if self.step_count > self.cool_down and self.fade_steps:
            self._finish_fades()
        if self.step_count < self.warm_up or self.step_count > self.cool_down:
            return
        self.refresh_masks()

    def _set_mask(self, param: MovementMask, hard: torch.Tensor) -> None:
        """Take `hard` (0/1) as the mask, or with fading, let blocks that left it step down towards 0."""
        hard = hard.to(param.mask.device, param.mask.dtype)  # the allocator's masks are CPU tensors
        if self.fade_steps:
            faded = (param.mask - 1.0 / self.fade_steps).clamp_min(0.0)
            hard = torch.maximum(hard, torch.where(faded < 1e-6, 0.0, faded))
        param.mask.copy_(hard)

    @torch.no_grad()
    def _finish_fades(self) -> None:
        """After the cool-down the kept blocks are fixed (mask 1); the others go on fading to 0, and
        `fade_steps` after it are 0 exactly (float steps of 1/n can leave a last sliver)."""
        done = self.step_count >= self.cool_down + self.fade_steps
        for param in self.params.values():
            keep = (param.mask >= 1.0).float()
            if done:
                param.mask.copy_(keep)
            else:
                self._set_mask(param, keep)

    def refresh_masks(self) -> None:
        """Recompute every mask from the current scores."""
        with torch.no_grad():
            if self.mode == "soft":
                threshold = self.threshold * self.ramp(self.step_count)
                for param in self.params.values():
                    keep = (param.scores > threshold).float()
                    param.mask.copy_(keep.repeat_interleave(param.block[0], 0).repeat_interleave(param.block[1], 1))
            else:
                masks = self.pruner.compute_masks(self.ramp(self.step_count))
                for name, tensors in masks.items():
                    self._set_mask(self.params[name], tensors["weight"])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Scores and masks, for checkpoints (safetensors-friendly keys)."""
        out = {f"{n}.scores": p.scores.detach().cpu() for n, p in self.params.items()}
        out.update({f"{n}.mask": p.mask.detach().cpu() for n, p in self.params.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], step_count: int) -> None:
        """Restore `state_tensors()` output and the step counter."""
        with torch.no_grad():
            for n, p in self.params.items():
                p.scores.copy_(tensors[f"{n}.scores"])
                p.mask.copy_(tensors[f"{n}.mask"])
        self.step_count = step_count
