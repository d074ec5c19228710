"""The staged recipe, top to bottom: the NNI tutorial's workflow as one resumable run.

    finetune -> attention (movement) -> heads (shrink) -> distil -> ffn (Taylor rounds, each
    followed by a shrink) -> final_distil -> report

Each stage writes its outputs under ``<output_dir>/stages/<stage>/`` and a ``done.json`` last;
a resumed run skips finished stages and restarts an unfinished one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from trimformer import dist, glue
from trimformer.calibrate import calibrate_output_bias
from trimformer.compensate import compensate_heads, sample_batches
from trimformer.distill import compute_teacher_logits, load_teacher_logits, save_teacher_logits
from trimformer.ffn_stage import run_ffn_stage
from trimformer.glue_metrics import compute_metrics
from trimformer.holdout import RowsRecord, rows_to_read, split_holdout
from trimformer.io import load_pruned, save_pruned, write_json
from trimformer.masks import load_masks, remove_masks, save_masks
from trimformer.movement import MovementEngine
from trimformer.plan import value_rule_masks
from trimformer.recipe import Distil, Ffn, Recipe
from trimformer.refit import HeadRefit
from trimformer.shrink import shrink
from trimformer.structure import model_structure
from trimformer.target_stage import apply_target
from trimformer.train import TrainSettings, evaluate, fit, predict, stage_steps

log = logging.getLogger("trimformer")
STAGES = ("finetune", "attention", "heads", "distil", "ffn", "final_distil")


@dataclass
class RunOptions:
    """What `trimformer run` was asked to do."""

    model: str
    task: str
    output_dir: Path
    recipe: Recipe
    glue_dir: str | None = None
    resume: bool = False
    target_speedup: float | None = None
    device: str = "auto"  # auto: the process's accelerator device (a GPU if there is one), else CPU
    bf16: bool = False  # bf16 autocast for training on GPUs


@dataclass
class RunData:
    task: glue.TaskSpec
    tokenizer: object
    collate: object
    train: glue.GlueDataset
    dev: dict[str, glue.GlueDataset]
    rows: RowsRecord  # which rows are trained on and which set aside (data.json)
    holdout: glue.GlueDataset | None = None  # training rows set aside to choose checkpoints on


def load_data(options: RunOptions) -> RunData:
    """Tokenised train and dev sets (errors about missing files come before any training)."""
    from transformers import AutoTokenizer

    task = glue.get_task(options.task)
    glue.check_task_files(task, options.glue_dir)
    recipe = options.recipe
    tokenizer = AutoTokenizer.from_pretrained(options.model)
    rows = glue.load_split(task, "train", options.glue_dir, rows_to_read(recipe.max_train_samples, recipe.select_rows))
    train, holdout = split_holdout(rows, recipe.select_rows, recipe.max_train_samples)
    dev = {s: glue.load_split(task, s, options.glue_dir, recipe.max_eval_samples) for s in task.dev_splits}
    enc = lambda rows: glue.GlueDataset(glue.encode(tokenizer, task, rows, recipe.max_seq_length))  # noqa: E731
    return RunData(task, tokenizer, glue.make_collator(tokenizer), enc(train), {k: enc(v) for k, v in dev.items()},
                   RowsRecord.of(train, holdout), enc(holdout) if holdout else None)


def resolve_device(name: str) -> torch.device:
    """'auto': under a launcher, the process's accelerator device; else CUDA if present, else CPU."""
    if name != "auto":
        return torch.device(name)
    if dist.launched():
        return dist.accelerator().device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Run:
    """One pipeline run; each `stage_*` method reads the previous stage's outputs from disk."""

    def __init__(self, options: RunOptions, data: RunData):
        self.options, self.data, self.recipe = options, data, options.recipe
        self.out = Path(options.output_dir)
        self.task = data.task
        self.device = resolve_device(options.device)
        self.target_shape: tuple[int, int] | None = None  # heads, FFN channels a layer: set by apply_target
        if data.holdout is not None:
            log.info("%d training rows set aside to choose the best weights on (select_rows); %d trained on",
                     len(data.holdout), len(data.train))

    def stage_dir(self, stage: str) -> Path:
        return self.out / "stages" / stage

    def done(self, stage: str) -> dict | None:
        path = self.stage_dir(stage) / "done.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return evaluate(model, self.task, self.data.dev, self.data.collate, self.recipe.eval_batch_size, self.device)

    def choose(self, model: nn.Module) -> dict[str, float]:
        """The metrics a stage keeping its best weights chooses by: the holdout's, else dev's."""
        if self.data.holdout is None:
            return self.evaluate(model)
        logits, labels = predict(model, self.data.holdout, self.data.collate, self.recipe.eval_batch_size,
                                 self.device)
        metrics = compute_metrics(self.task, logits, labels)
        # MNLI's main metric ("default") is the mean accuracy of its two dev splits: on one holdout, its accuracy.
        main = "accuracy" if self.task.main_metric == "default" else self.task.main_metric
        return {self.task.main_metric: metrics[main], **metrics}

    def settings(self, section, distill: bool = False, seed_offset: int = 0, **extra) -> TrainSettings:
        r = self.recipe
        distill = distill and (r.distill_regression or not self.task.is_regression)
        # Distil and FFN sections carry the KD mix; the others use the tutorial's (0.1, T=2) if distilling.
        return TrainSettings(epochs=section.epochs, max_steps=section.max_steps, batch_size=r.train_batch_size,
                             lr=section.lr, warmup_ratio=section.warmup_ratio, distill=distill,
                             alpha=getattr(section, "alpha", 0.1), temperature=getattr(section, "temperature", 2.0),
                             seed=r.seed + seed_offset, checkpoint_every=r.checkpoint_every,
                             bf16=self.options.bf16, eval_every=section.eval_every,
                             hidden_weight=section.hidden_distill,
                             average=section.average, **extra)

    def teacher_model(self, section) -> nn.Module | None:
        """The frozen model whose hidden states the stage distils (the fine-tuned one unless the
        section names another stage's, `ffn.hidden_teacher`), when it distils hidden states."""
        if section.hidden_distill <= 0:
            return None
        source = getattr(section, "hidden_teacher", "finetune")
        log.info("hidden states distilled from the %s stage's model (weight %g)", source, section.hidden_distill)
        teacher = load_pruned(self.stage_dir(source) / "model", self.device).eval()
        return teacher.requires_grad_(False)

    def teacher_logits(self) -> torch.Tensor:
        return load_teacher_logits(self.out / "teacher_logits.safetensors", expected_rows=len(self.data.train))

    def teacher_set(self) -> glue.GlueDataset:
        return self.data.train.with_teacher_logits(self.teacher_logits())

    def calibrate(self, model: nn.Module, section: Distil | Ffn) -> dict:
        """With `calibrate_rows` set on a classification task: shift the output bias so the model's
        mean prediction on that many training rows is the teacher's (calibrate.py); what it did."""
        if section.calibrate_rows == 0 or self.task.is_regression:
            return {}
        shift = calibrate_output_bias(model, self.data.train, self.data.collate, self.teacher_logits(),
                                      section.calibrate_rows, self.recipe.eval_batch_size, self.device)
        log.info("output bias shifted by %s to the teacher's class rates", [round(v, 4) for v in shift.tolist()])
        return {"calibration_shift": shift.tolist()}

    def finish(self, stage: str, start: float, metrics: dict[str, float], **extra) -> None:
        record = {"stage": stage, "seconds": time.perf_counter() - start, "metrics": metrics, **extra}
        dist.on_main(lambda: write_json(self.stage_dir(stage) / "done.json", record))
        # Resume state is dead weight once the stage is recorded (a MiniLM run kept ~1 GB of it).
        dist.on_main(lambda: [shutil.rmtree(self.stage_dir(stage) / name, ignore_errors=True)
                              for name in ("checkpoint", "recover_checkpoint", "round_model")])
        log.info("stage %s done: %s", stage, metrics)

    # -- stages ---------------------------------------------------------------------------------
    def stage_finetune(self) -> None:
        from transformers import AutoModelForSequenceClassification

        start = time.perf_counter()
        torch.manual_seed(self.recipe.seed)
        # float32 master weights whatever the checkpoint's dtype (bf16 is an autocast choice, not storage).
        # A head made for another label count (an SST-2 model fine-tuned on STS-B) is re-initialised, as
        # transformers' run_glue does: this stage trains the head for the task anyway.
        model = AutoModelForSequenceClassification.from_pretrained(
            self.options.model, num_labels=self.task.num_labels, dtype=torch.float32,
            ignore_mismatched_sizes=True).to(self.device)
        result = fit(model, self.task, self.data.train, self.data.collate,
                     self.settings(self.recipe.finetune, keep_best=True), evaluate_fn=self.evaluate,
                     select_fn=self.choose, main_metric=self.task.main_metric,
                     checkpoint_dir=self.stage_dir("finetune") / "checkpoint", device=self.device, desc="finetune")
        logits = compute_teacher_logits(model, self.data.train, self.data.collate, self.recipe.eval_batch_size,
                                        device=self.device)
        dist.on_main(lambda: save_teacher_logits(logits, self.out / "teacher_logits.safetensors"))
        dist.on_main(lambda: save_pruned(model, self.stage_dir("finetune") / "model", tokenizer=self.data.tokenizer))
        self.finish("finetune", start, result.metrics)

    def stage_attention(self) -> None:
        start, section = time.perf_counter(), self.recipe.attention
        model = load_pruned(self.stage_dir("finetune") / "model", self.device)
        structure = model_structure(model)
        names = [n for layer in structure.layers for n in layer.attention_linears]
        settings = self.settings(section, distill=section.distill)
        steps = stage_steps(settings, len(self.data.train))
        cool_down = int(section.cool_down * steps)
        if section.recover_lr is not None:  # the steps at the final head set restart from recover_lr
            settings = replace(settings, restart_step=cool_down, restart_lr=section.recover_lr)
        # Hard mode ranks whole heads (q, k, v rows + output columns together), so shrinking removes them.
        engine = MovementEngine(model, [{"op_names": names, "sparsity": section.sparsity}],
                                warm_up_step=int(section.warm_up * steps),
                                cool_down_beginning_step=cool_down,
                                regular_scale=section.regular_scale, movement_mode=section.mode,
                                granularity=section.granularity, score_lr=section.score_lr,
                                head_units=section.mode == "hard", score_optimizer=section.score_optimizer,
                                threshold=section.threshold, head_allocation=section.allocation,
                                score=section.score, taylor_decay=section.taylor_decay,
                                taylor_blocks=section.taylor_blocks,
                                fade_steps=min(section.fade_steps, steps - cool_down))
        if engine.fade_steps < section.fade_steps:
            log.warning("attention.fade_steps=%d capped to %d: every fade must end by the stage's last step, "
                        "%d steps after the cool-down", section.fade_steps, engine.fade_steps, engine.fade_steps)
        if section.mode == "hard":
            decay = f" (moving sums, decay {engine.taylor_decay:g} a step)" if engine.taylor_decay < 1 else ""
            decay += " over the output blocks alone" if engine.taylor_blocks == "output" else ""
            decay += f", leaving heads faded out over {engine.fade_steps} steps" if engine.fade_steps else ""
            log.info("attention: %s heads ranked by %s scores%s", section.allocation, engine.score, decay)
        # attention.compensate: heads leaving a layer are re-fitted into its kept ones at once (refit.py)
        refit = (HeadRefit(model, section.compensate_tokens, section.compensate_decay, section.compensate_ridge,
                           seed=self.recipe.seed + 8191) if section.compensate == "lstsq" else None)
        hook = refit.step_hook(engine) if refit is not None else lambda *_: engine.step()
        state = refit.extra_state(engine) if refit is not None else (engine.state_tensors, engine.load_state_tensors)
        train_set = self.teacher_set() if section.distill else self.data.train
        try:
            result = fit(model, self.task, train_set, self.data.collate, settings, evaluate_fn=self.evaluate,
                         main_metric=self.task.main_metric,
                         checkpoint_dir=self.stage_dir("attention") / "checkpoint",
                         on_optimizer=lambda opt: opt.register_step_post_hook(hook),
                         extra_loss=engine.regularization_loss, extra_state=state, device=self.device,
                         desc="attention", teacher=self.teacher_model(section))
        finally:
            if refit is not None:
                refit.close()
                log.info("attention: %d output projection re-fits as heads left; %d times a layer got a head back",
                         refit.refits, refit.returns)
        engine.pruner.show_pruned_weights(log.info)
        masks = engine.pruner.masks
        dist.check_identical({n: m["weight"] for n, m in masks.items()}, "the attention masks")
        dist.on_main(lambda: save_masks(masks, self.stage_dir("attention") / "masks.safetensors"))
        if self.recipe.heads.source == "attention":
            # The trained weights without the masks: the heads stage cuts them with the saved masks
            # (a partly masked head then gets these weights back, as it would the fine-tuned ones).
            remove_masks(model, bake=False)
            dist.on_main(lambda: save_pruned(model, self.stage_dir("attention") / "model",
                                             tokenizer=self.data.tokenizer))
        self.finish("attention", start, result.metrics)

    def stage_heads(self) -> None:
        start, section = time.perf_counter(), self.recipe.heads
        model = load_pruned(self.stage_dir(section.source) / "model", self.device)
        masks = load_masks(self.stage_dir("attention") / "masks.safetensors")
        if section.rule == "value":
            masks = value_rule_masks(model, masks)
        if section.compensate == "lstsq":
            batches = sample_batches(self.data.train, section.compensate_rows, self.recipe.eval_batch_size,
                                     self.data.collate, self.recipe.seed + 4099)
            fitted = compensate_heads(model, masks, batches, self.device, section.compensate_ridge,
                                      section.drop_empty_layers)
            log.info("heads: %d attention output projections re-fitted by least squares over %d tokens", *fitted)
        plan = shrink(model, masks, restore_partial=section.restore_partial,
                      drop_empty_layers=section.drop_empty_layers)
        dist.on_main(lambda: save_pruned(model, self.stage_dir("heads") / "model", tokenizer=self.data.tokenizer,
                                         plan=plan))
        self.finish("heads", start, self.evaluate(model), heads_per_layer=[len(lp.heads_kept) for lp in plan.layers
                                                                           if not lp.dropped])

    def _distil(self, stage: str, source: str, section: Distil) -> None:
        start = time.perf_counter()
        model = load_pruned(self.stage_dir(source) / "model", self.device)
        if not section.enabled:
            dist.on_main(lambda: save_pruned(model, self.stage_dir(stage) / "model", tokenizer=self.data.tokenizer))
            self.finish(stage, start, self.evaluate(model), skipped=True)
            return
        result = fit(model, self.task, self.teacher_set(), self.data.collate,
                     self.settings(section, distill=True, keep_best=True), evaluate_fn=self.evaluate,
                     select_fn=self.choose, main_metric=self.task.main_metric,
                     checkpoint_dir=self.stage_dir(stage) / "checkpoint", device=self.device, desc=stage,
                     teacher=self.teacher_model(section))
        extra = self.calibrate(model, section)
        dist.check_identical(model.state_dict(), f"the weights after {stage}")
        dist.on_main(lambda: save_pruned(model, self.stage_dir(stage) / "model", tokenizer=self.data.tokenizer))
        self.finish(stage, start, self.evaluate(model) if extra else result.metrics, **extra)

    def stage_distil(self) -> None:
        self._distil("distil", "heads", self.recipe.distil)

    def stage_final_distil(self) -> None:
        self._distil("final_distil", "ffn", self.recipe.final_distil)

    def stage_ffn(self) -> None:
        run_ffn_stage(self)

    def run_stages(self, stop_after: str | None = None) -> None:
        """Run every unfinished stage in order (up to and including `stop_after`)."""
        if self.task.is_regression and not self.recipe.distill_regression:
            log.info("regression task: the distilling stages train on the labels alone (distill_regression: false)")
        for stage in STAGES:
            if stage == "attention" and self.options.target_speedup is not None:
                apply_target(self)
            if self.done(stage) is not None:
                log.info("stage %s already done; skipping", stage)
            else:
                log.info("stage %s", stage)
                getattr(self, f"stage_{stage}")()
            if stage == stop_after:
                break
