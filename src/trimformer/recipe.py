"""Recipes: the YAML file that is the single source of truth for a run.

Unknown keys are errors; `key=value` overrides (dotted, e.g. ``attention.regular_scale=20``)
apply on top, before validation, so a sweep is one loop over a flag. Shipped recipes live in
``trimformer/recipes/*.yaml`` and are found by name.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trimformer.config import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StageTrain(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)
    lr: float = Field(3e-5, gt=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    eval_every: int | None = Field(None, ge=1)  # stages that keep their best weights also evaluate this often
    # Pruning stages: > 0 adds this weight x the MSE between the model's hidden states and the
    # fine-tuned model's after every layer (the teacher then runs at every step).
    hidden_distill: float = Field(0.0, ge=0)
    # > 0: the stage ends on the uniform average of the weights after each of its last this fraction
    # of steps (SWA-style tail average; the FFN stage averages its recovery steps, whose shape is fixed;
    # a stage that keeps its best weights by evaluation keeps the average instead).
    average: float = Field(0.0, ge=0, le=1)


class Finetune(StageTrain):
    epochs: float = Field(3.0, gt=0)


class Attention(StageTrain):
    """Movement pruning of attention: per-head blocks, soft (regular_scale) or hard (sparsity)."""

    mode: Literal["soft", "hard"] = "soft"
    regular_scale: float = Field(10.0, ge=0)
    sparsity: float = Field(0.5, ge=0, lt=1)  # hard mode's target
    granularity: Literal["auto", "finegrained"] = "auto"
    warm_up: float = Field(0.25, ge=0, le=1)  # fractions of the stage's steps
    cool_down: float = Field(0.75, ge=0, le=1)
    score_lr: float = Field(1.0, gt=0)
    score_optimizer: Literal["sgd", "adam"] = "sgd"  # adam at score_lr 0.01 is what the NNI tutorial ran
    threshold: float = Field(0.0, ge=0)  # soft mode: keep blocks scoring above this (ramped; NNI: 0.1)
    # Hard mode: 'layer' removes the same share of heads in every layer; 'global' ranks all heads of
    # all layers together (same total, so the same FLOPs), each layer keeping at least one;
    # 'global_norm' the same after dividing each layer's head scores by their L2 norm.
    allocation: Literal["layer", "global", "global_norm"] = "layer"
    distill: bool = False
    # Hard mode: what ranks the heads: learned movement scores, or first-order Taylor importance,
    # |sum of w * dL/dw| per block added every step, a head's four blocks summed (movement.py).
    # score_lr and score_optimizer train movement scores only.
    score: Literal["movement", "taylor"] = "movement"
    # Taylor scores: each step multiplies the sums by this before adding (1: a plain sum over the
    # stage; below 1 the ranking follows the model as heads go, over about 1 / (1 - decay) steps).
    taylor_decay: float = Field(1.0, gt=0, le=1)
    # Which of a head's blocks its Taylor score sums: 'all' four (q, k, v rows and output columns), or
    # 'output' alone: |sum of w * dL/dw| over the output projection's columns of a head is |sum over
    # tokens of h * dL/dh| for the head's context vectors h, the loss change of removing the head
    # (Michel et al. 2019), where zeroing its q or k rows leaves it attending uniformly.
    taylor_blocks: Literal["all", "output"] = "all"
    # Hard mode: a head leaving the mask fades out linearly over this many steps instead of at once
    # (capped so every fade ends by the stage's last step).
    fade_steps: int = Field(0, ge=0)
    # Set: the steps from the cool-down on (the kept heads fixed; faded ones finishing their fade)
    # train from this lr decaying to zero, as the FFN stage's recovery does (`ffn.recover_lr`); unset:
    # the tail of the stage's one decay (without warm-up, a quarter of `lr` at a cool-down of 0.75).
    recover_lr: float | None = Field(None, gt=0)
    # 'lstsq' (hard mode): when heads leave a layer's mask, re-fit its attention output projection at
    # once by ridge least squares to emit what it did with them (refit.py), from decayed moments of
    # `compensate_tokens` tokens a batch (decay `compensate_decay` a batch).
    compensate: Literal["none", "lstsq"] = "none"
    compensate_tokens: int = Field(256, ge=1)
    compensate_decay: float = Field(0.9, gt=0, le=1)
    compensate_ridge: float = Field(1e-3, gt=0)  # times the channels' mean second moment

    @model_validator(mode="after")
    def _taylor_is_hard(self) -> Attention:
        if self.score == "taylor" and self.mode != "hard":
            raise ValueError("score 'taylor' ranks heads for hard mode; set attention.mode=hard")
        if self.score == "taylor" and (self.score_optimizer != "sgd" or self.score_lr != 1.0):
            raise ValueError("score 'taylor' sums importance and trains no scores; drop score_optimizer and score_lr")
        if self.taylor_decay != 1.0 and self.score != "taylor":
            raise ValueError("taylor_decay shapes Taylor scores; set attention.score=taylor")
        if self.taylor_blocks != "all" and self.score != "taylor":
            raise ValueError("taylor_blocks shapes Taylor scores; set attention.score=taylor")
        if self.average:
            raise ValueError("average is for stages of one shape; the attention stage's masks change")
        if self.fade_steps and self.mode != "hard":
            raise ValueError("fade_steps fades out heads in hard mode; set attention.mode=hard")
        if self.compensate != "none" and (self.mode != "hard" or self.fade_steps):
            raise ValueError("attention.compensate re-fits as heads leave in hard mode without fading; "
                             "set attention.mode=hard and attention.fade_steps=0")
        if self.recover_lr is not None and not (self.warmup_ratio <= self.cool_down < 1):
            raise ValueError("recover_lr restarts the lr at the cool-down: it needs cool_down below 1 and "
                             "not before the lr warm-up ends (warmup_ratio <= cool_down)")
        return self


class Heads(_Strict):
    drop_empty_layers: bool = False
    restore_partial: bool = True  # partly masked heads get their fine-tuned weights back (tutorial)
    # Which weights the heads are cut from: the fine-tuned model's (the tutorial reloads it and keeps
    # only the masks) or the attention stage's, trained for a whole epoch under the masks.
    source: Literal["finetune", "attention"] = "finetune"
    # When a head goes: 'all' of its q, k, v rows and output columns masked (exact), or, as the
    # tutorial does, 'value': its value rows masked (the rest of the head goes with them).
    rule: Literal["all", "value"] = "all"
    # 'lstsq' (with `source: finetune`): before the cut, re-fit each layer's attention output projection
    # by ridge least squares so it emits what all its heads did (compensate.py), from inference moments
    # over `compensate_rows` training rows of the fine-tuned model.
    compensate: Literal["none", "lstsq"] = "none"
    compensate_rows: int = Field(512, ge=1)
    compensate_ridge: float = Field(1e-3, gt=0)  # times the channels' mean second moment

    @model_validator(mode="after")
    def _compensate_from_the_finetune(self) -> Heads:
        # The attention stage's weights were trained without the cut heads: re-fitting their work into
        # the kept ones would undo that. Without restore_partial, the masks multiplied in after the fit
        # would zero parts of re-fitted columns of partly masked heads.
        if self.compensate != "none" and (self.source != "finetune" or not self.restore_partial):
            raise ValueError("heads.compensate needs heads.source: finetune and heads.restore_partial: true")
        return self


class Distil(StageTrain):
    enabled: bool = True  # false: the stage passes its input model through unchanged
    epochs: float = Field(1.0, gt=0)
    alpha: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    # > 0: at the end of the stage, shift the classifier's bias so its mean prediction on this many
    # training rows is the teacher's (calibrate.py; one inference pass; regression left alone).
    calibrate_rows: int = Field(0, ge=0)


class Ffn(StageTrain):
    """Taylor pruning of FFN channels in `rounds` rounds, each followed by a shrink."""

    rounds: int = Field(12, ge=1)
    taylor_steps: int = Field(20, ge=1)  # gradient steps the Taylor scores are gathered over
    # 'tutorial': keep half as much FFN as the layer kept heads (1 - 0.5 * heads kept fraction);
    # 'fixed': `sparsity` in every layer.
    rule: Literal["tutorial", "fixed"] = "tutorial"
    sparsity: float = Field(0.5, ge=0, lt=1)
    alpha: float = Field(0.1, ge=0, le=1)
    temperature: float = Field(2.0, gt=0)
    # > 0: at the end of the stage, shift the classifier's bias so its mean prediction on this many
    # training rows is the teacher's (calibrate.py; one inference pass; regression left alone).
    calibrate_rows: int = Field(0, ge=0)
    # Fraction of the stage's steps kept back from the rounds and trained at the final width, so the
    # last cut gets time to recover (0: the rounds fill the stage, as in the tutorial).
    recover: float = Field(0.0, ge=0, lt=1)
    # Learning rate the recovery steps start from (decaying to zero); unset: the last round's, lr / rounds.
    recover_lr: float | None = Field(None, gt=0)
    # 'layer': each layer loses its own share per round; 'global' (with rule 'fixed'): one Taylor
    # ranking of the channels of all layers per round, the same total, no layer losing more than
    # three times the round's share in one round.
    allocation: Literal["layer", "global"] = "layer"
    # 'lstsq': before each cut, re-fit the kept columns and bias of the second FFN linear by least
    # squares so it emits what it did with the channels that go (compensate.py), from inference
    # moments over `compensate_rows` training rows.
    compensate: Literal["none", "lstsq"] = "none"
    compensate_rows: int = Field(512, ge=1)
    compensate_ridge: float = Field(1e-3, gt=0)  # times the channels' mean second moment
    # What ranks the channels each round: 'taylor', the sum of |w * dL/dw| over the channel's row of
    # the first FFN linear (NNI's TaylorPruner); 'channel', |sum of w * dL/dw| over its column of the
    # second linear, added every step: that sum is sum over tokens of a * dL/da for the channel's
    # activation a, the first-order change of the loss if the channel is removed.
    score: Literal["taylor", "channel"] = "taylor"
    # Whose hidden states `hidden_distill` matches here: 'finetune', the dense fine-tuned model's (as
    # in the other stages); 'distil', the model this stage starts from (same heads, every channel),
    # so the MSE is exactly what the cuts changed and the training repairs that.
    hidden_teacher: Literal["finetune", "distil"] = "finetune"
    # Every layer's final width is a multiple of this: matrix kernels pack operands in blocks, so on
    # this AVX2 CPU odd widths ran 2-4% slower than multiples of 8 at equal FLOPs
    # (bench/results/width_alignment.json, width_alignment_x3.json) and on an H200 an FFN of 1,100 ran
    # 1.6x slower than 1,088. Unset: 64 when latency is timed on a GPU (`bench.device: cuda`), else 16
    # (a multiple of AVX2's 8 floats and of AVX-512's 16); 1 for a toy FFN narrower than eight such
    # steps. The latency target's shape search uses it too.
    multiple: int | None = Field(None, ge=1)

    def width_multiple(self, bench: Bench, full_width: int) -> int:
        """`multiple`, or its default for latency timed as `bench` says and a dense FFN this wide."""
        if self.multiple is not None:
            return self.multiple
        step = 64 if bench.device == "cuda" else 16
        return step if full_width >= 8 * step else 1

    @model_validator(mode="after")
    def _average_needs_recovery(self) -> Ffn:
        if self.average and not self.recover:
            raise ValueError("average is taken over the recovery steps (the rounds change the shape); set ffn.recover")
        return self


class Bench(_Strict):
    """How the report's speedup and `--target-speedup`'s shapes are timed (dense and pruned in one
    process): the input shape, and where. On a GPU time with `compile: true` (CUDA graphs; eager calls
    at these sizes are launch-bound) and usually `bf16: true`."""

    batch_size: int = Field(32, ge=1)
    seq_len: int = Field(128, ge=1)
    warmup: int = Field(2, ge=0)
    repeats: int = Field(10, ge=1)
    # The report times the final model against the dense one this many times over and keeps the median
    # pass (on a shared 2-core VM one pass strayed 15% from its shape's figure in the shape search). The
    # heads stage's figure is one pass; under `compile` every pass compiles both models again.
    passes: int = Field(3, ge=1)
    threads: int | None = None
    device: Literal["cpu", "cuda"] = "cpu"
    bf16: bool = False  # autocast the timed forwards to bfloat16
    compile: bool = False  # time each model under torch.compile (CUDA graphs on a GPU)


class Target(_Strict):
    """How `--target-speedup` splits its FLOPs budget between heads and FFN channels."""

    # The heads' kept share over the FFN channels' (1: both cut alike; 2: each layer keeps twice the
    # share of its heads that it keeps of its channels, at the same FLOPs, so fewer channels).
    head_ratio: float = Field(1.0, gt=0)
    # Whether every layer keeps exactly the timed shape: 'uniform' (attention and FFN allocated per
    # layer), 'recipe' (the recipe's allocation: `global` spreads the same totals over the layers as
    # the scores say), 'auto' (uniform when the shapes are timed on a GPU). On the CPU a spread moved
    # the speedup by 1-2% (bench/results/uneven_shapes.json); on an H100 under CUDA graphs the spread
    # [5, 9, 5, 1, 1, 3] heads and FFN 1354..64 timed x1.16 where its uniform shape, 4 heads and 576
    # channels, timed x1.49 (bench/results/gpu_target_run): a GPU's cost is not linear in the width.
    allocation: Literal["auto", "uniform", "recipe"] = "auto"

    def keeps_timed_shape(self, bench: Bench) -> bool:
        """Whether each layer keeps exactly the timed shape, for shapes timed as `bench` says."""
        return self.allocation == "uniform" or (self.allocation == "auto" and bench.device == "cuda")


class Recipe(_Strict):
    """A whole run: data sizes, then one section per stage."""

    name: str = "custom"
    max_seq_length: int = Field(128, ge=8, le=512)
    train_batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    max_train_samples: int | None = Field(None, ge=1)
    max_eval_samples: int | None = Field(None, ge=1)
    # Training rows set aside, and not trained on, to choose the best weights on in the stages that
    # keep them (holdout.py: from beyond max_train_samples where the file has them, else at most a
    # tenth of the file); 0 chooses on the dev set, whose reported metric is then the best of several
    # looks at it. The shipped recipes set aside 500.
    select_rows: int = Field(0, ge=0)
    seed: int = 1024
    checkpoint_every: int = Field(100, ge=1)
    # false: a regression task (one output, STS-B) trains on its labels alone in every stage that
    # would distil. KD on a score is the MSE to the teacher's score: no class similarities to pass on,
    # only the fine-tune's errors (bench/results/regression-cpu). Classification is unaffected.
    distill_regression: bool = True
    finetune: Finetune = Finetune()
    attention: Attention = Attention()
    heads: Heads = Heads()
    distil: Distil = Distil()
    ffn: Ffn = Ffn()
    final_distil: Distil = Distil()
    bench: Bench = Bench()
    target: Target = Target()

    @model_validator(mode="after")
    def _refit_weights_are_cut(self) -> Recipe:
        if self.attention.compensate != "none" and self.heads.source != "attention":
            raise ValueError("attention.compensate re-fits the attention stage's weights: set heads.source: attention "
                             "(with source: finetune the heads are cut from the fine-tune)")
        return self


def shipped_recipes() -> list[str]:
    """Names of the recipes that ship with trimformer."""
    folder = resources.files("trimformer") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _recipe_text(name_or_path: str) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file not found: {path}")
        return path.read_text(), str(path)
    resource = resources.files("trimformer") / "recipes" / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}: shipped recipes are {shipped_recipes()}, "
                          "or give a path to a .yaml file")
    return resource.read_text(), f"recipe {name_or_path!r}"


def _apply_override(data: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not key=value")
    key, raw = override.split("=", 1)
    value = yaml.safe_load(raw) if raw else None
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


def load_recipe(name_or_path: str, overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name or a YAML file by path, apply overrides, validate."""
    text, where = _recipe_text(name_or_path)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{where} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping of settings")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return Recipe(**data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ConfigError(f"{where}: unknown key {loc!r}") from None
        raise ConfigError(f"{where}: {loc}: {first['msg']}") from None
