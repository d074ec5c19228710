"""One explicit training / evaluation loop, with distillation, pruning hooks and checkpoints.

Device, mixed precision and multi-process data sharding come from accelerate. Data order is a
pure function of (seed, epoch), so a run resumed from a checkpoint sees the same batches as
one that never stopped.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from trimformer import dist
from trimformer.checkpoint import CheckpointError, has_checkpoint, load_checkpoint, save_checkpoint
from trimformer.distill import hidden_loss, kd_loss
from trimformer.glue import TaskSpec
from trimformer.glue_metrics import combine_splits, compute_metrics

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class TrainSettings:
    """How one stage trains."""

    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 32
    lr: float = 3e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    distill: bool = False
    alpha: float = 0.1
    temperature: float = 2.0
    seed: int = 1024
    checkpoint_every: int = 100
    keep_best: bool = False  # evaluate at each epoch end (and every `eval_every` steps); keep the best weights
    # (off when `average` > 0: the stage then ends on the average)
    eval_every: int | None = None
    bf16: bool = False  # autocast the forward to bfloat16 (GPUs); optimiser state stays float32
    hidden_weight: float = 0.0  # > 0 (with a teacher given to fit): add this x layer-wise hidden-state MSE
    average: float = 0.0  # > 0: end on the mean of the weights after each of the last this fraction of steps
    # From this step on the lr restarts at `restart_lr` and decays linearly towards 0 (0 after the last
    # step), as the attention stage's steps after its cool-down do; both set or neither.
    restart_step: int | None = None
    restart_lr: float | None = None

    def __post_init__(self) -> None:
        if (self.restart_step is None) != (self.restart_lr is None):
            raise ValueError("restart_step and restart_lr go together: set both or neither")


def stage_steps(settings: TrainSettings, rows: int) -> int:
    """The optimiser steps `fit` takes over `rows` training rows: `max_steps`, else the epochs'."""
    return settings.max_steps or max(1, math.ceil(settings.epochs * math.ceil(rows / settings.batch_size)))


@dataclass
class FitResult:
    steps: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None


class TailAverage:
    """The uniform mean of the parameters after each of the last `round(fraction * total)` steps
    (SWA-style), kept as a running mean: one extra float32 copy of the weights. Checkpoints carry
    `mean` and `first` (the first averaged step); the step count follows from the step."""

    def __init__(self, model: nn.Module, total: int, fraction: float) -> None:
        self.params = dict(model.named_parameters())
        self.first = total - max(1, round(fraction * total)) + 1
        self.mean: dict[str, torch.Tensor] = {}

    def update(self, step: int) -> None:
        """Fold in the weights after `step` (1-based) if it is one of the averaged steps."""
        count = step - self.first + 1
        if count < 1:
            return
        for name, param in self.params.items():
            if count == 1:
                self.mean[name] = param.detach().float().clone()
            else:
                self.mean[name].lerp_(param.detach().float(), 1.0 / count)

    @torch.no_grad()
    def apply(self) -> None:
        """Put the mean into the model's parameters."""
        for name, value in self.mean.items():
            self.params[name].copy_(value.to(self.params[name].dtype))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the tensors the model's forward takes (labels and teacher logits are ours)."""
    return {k: v for k, v in batch.items() if k in MODEL_INPUTS}


def epoch_batches(dataset: Dataset, batch_size: int, collate: Callable, seed: int, epoch: int, skip: int = 0):
    """Shuffled batches whose order depends only on (seed, epoch); under several processes each
    rank gets its contiguous share of every global batch, so N processes see what one would."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(dataset), generator=generator).tolist()
    for start in range(skip * batch_size, len(order), batch_size):
        yield collate([dataset[i] for i in dist.shard(order[start:start + batch_size])])


def task_loss(task: TaskSpec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if task.is_regression:
        return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy(logits, labels)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, collate: Callable, batch_size: int = 64,
            device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a dataset, in order."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        out = model(**{k: v.to(device) for k, v in model_inputs(batch).items()}).logits
        logits.append(out.float().cpu())
        labels.append(batch["labels"].cpu())
    model.train(was_training)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy()


def evaluate(model: nn.Module, task: TaskSpec, dev_sets: dict[str, Dataset], collate: Callable,
             batch_size: int = 64, device: torch.device | str = "cpu") -> dict[str, float]:
    """GLUE metrics on each dev split, combined (MNLI: matched, mismatched and their mean)."""
    per_split = {}
    for split, dataset in dev_sets.items():
        logits, labels = predict(model, dataset, collate, batch_size, device)
        per_split[split] = compute_metrics(task, logits, labels)
    return combine_splits(task, per_split)


def fit(model: nn.Module, task: TaskSpec, train_set: Dataset, collate: Callable, settings: TrainSettings, *,
        evaluate_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        select_fn: Callable[[nn.Module], dict[str, float]] | None = None, main_metric: str = "accuracy",
        checkpoint_dir: Path | None = None, on_optimizer: Callable[[torch.optim.Optimizer], None] | None = None,
        extra_loss: Callable[[], torch.Tensor] | None = None,
        extra_state: tuple[Callable[[], dict], Callable[[dict, int], None]] | None = None,
        device: torch.device | str = "cpu", desc: str = "train", teacher: nn.Module | None = None) -> FitResult:
    """Train `model` in place; the returned metrics are `evaluate_fn`'s on the final weights, which
    with `settings.keep_best` are the best by `select_fn` (default: `evaluate_fn`). `on_optimizer`
    attaches pruners to the optimiser; `extra_state` = (get tensors, set tensors and step) lets a
    pruner's state ride in the checkpoints; `teacher` (frozen) supplies hidden states when
    `settings.hidden_weight` > 0."""
    layer_kd = teacher is not None and settings.hidden_weight > 0
    torch.manual_seed(settings.seed)
    steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    total = stage_steps(settings, len(train_set))
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=settings.lr, eps=1e-8)
    warmup = int(settings.warmup_ratio * total)

    def lr_lambda(step: int) -> float:
        if settings.restart_step is not None and step >= settings.restart_step:
            restart = settings.restart_lr / settings.lr
            return restart * max(0.0, (total - step) / max(1, total - settings.restart_step))
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    if on_optimizer is not None:
        on_optimizer(optimizer)
    # Several processes: DDP (through accelerate) averages parameter gradients; `model` stays the
    # plain module that pruners, checkpoints and evaluation use.
    forward = dist.accelerator().prepare_model(model) if dist.world_size() > 1 else model
    step, best, best_state = 0, None, None
    tail = TailAverage(model, total, settings.average) if settings.average > 0 else None
    # The stage ends on the average: an earlier evaluation's raw weights must not replace it.
    keep_best = settings.keep_best and tail is None
    chooser = select_fn or evaluate_fn  # what keep_best compares the evaluations by
    if checkpoint_dir is not None and has_checkpoint(checkpoint_dir):
        state = load_checkpoint(checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        step = state.step
        logging.getLogger("trimformer").info("%s: resuming from the checkpoint at step %d", desc, step)
        best = state.extra_meta.get("best")
        best_keys = {k[5:]: v for k, v in state.extra_tensors.items() if k.startswith("best.")}
        best_state = best_keys or None
        if tail is not None:
            saved_first = state.extra_meta.get("average_first")
            if step >= tail.first and saved_first != tail.first:
                raise CheckpointError(f"{checkpoint_dir}: saved at step {step} averaging from step {saved_first}, "
                                      f"but this stage averages from step {tail.first} (was `average` changed?)")
            tail.mean = {k[4:]: v.to(device) for k, v in state.extra_tensors.items() if k.startswith("avg.")}
        if extra_state is not None:
            extra_state[1]({k[6:]: v for k, v in state.extra_tensors.items() if k.startswith("extra.")}, step)
    start = time.perf_counter()
    metrics: dict[str, float] = {}
    model.train()
    bar = tqdm(total=total, initial=step, desc=desc, leave=False, dynamic_ncols=True, disable=not dist.is_main())
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        # `skip`: the batches of this epoch already trained before the checkpoint.
        for batch in epoch_batches(train_set, settings.batch_size, collate, settings.seed, epoch, skip):
            on_gpu = torch.device(device).type == "cuda"  # pinned host memory lets the copy overlap compute
            batch = {k: (v.pin_memory() if on_gpu else v).to(device, non_blocking=on_gpu) for k, v in batch.items()}
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=settings.bf16):
                output = forward(**model_inputs(batch), output_hidden_states=layer_kd)
                if layer_kd:
                    with torch.no_grad():
                        teacher_hidden = teacher(**model_inputs(batch), output_hidden_states=True).hidden_states
            logits = output.logits.float()
            if settings.distill and "teacher_logits" in batch:
                loss = kd_loss(logits, batch["teacher_logits"], batch["labels"], alpha=settings.alpha,
                               temperature=settings.temperature, regression=task.is_regression)
            else:
                loss = task_loss(task, logits, batch["labels"])
            if layer_kd:
                loss = loss + settings.hidden_weight * hidden_loss(output.hidden_states, teacher_hidden,
                                                                   batch["attention_mask"])
            if extra_loss is not None:
                loss = loss + extra_loss().to(loss.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if tail is not None:
                tail.update(step)
                if step == total:  # what the evaluation below and the caller see
                    tail.apply()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", **({main_metric: f"{best:.4f}"} if best is not None else {}))
            epoch_end = step % steps_per_epoch == 0 or step == total
            due = epoch_end or (settings.eval_every is not None and step % settings.eval_every == 0)
            if chooser is not None and keep_best and due:
                chosen_by = chooser(model)[main_metric]
                if best is None or chosen_by > best:
                    best = chosen_by
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.train()
            if checkpoint_dir is not None and (step % settings.checkpoint_every == 0 or epoch_end) and step < total:
                extra = {f"best.{k}": v for k, v in (best_state or {}).items()}
                extra.update({f"avg.{k}": v for k, v in (tail.mean if tail is not None else {}).items()})
                if extra_state is not None:
                    extra.update({f"extra.{k}": v for k, v in extra_state[0]().items()})
                if dist.is_main():
                    save_checkpoint(checkpoint_dir, model=model, optimizer=optimizer, scheduler=scheduler,
                                    step=step, extra_tensors=extra, extra_meta={
                                        "best": best, "average_first": tail.first if tail is not None else None})
                dist.barrier()
            if step >= total:
                break
    bar.close()
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    if evaluate_fn is not None:
        metrics = evaluate_fn(model)
    return FitResult(steps=step, seconds=time.perf_counter() - start, metrics=metrics, best_metric=best)
