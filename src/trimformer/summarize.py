"""The run's last step: reload what was saved, measure it against the dense model, report.

Everything in the report is recomputed from the files on disk (the saved final model is
reloaded, not taken from memory), so the report proves what a user will load.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trimformer.bench import compare_latency, layer_widths, size_report
from trimformer.io import load_pruned
from trimformer.pipeline import STAGES, Run, log
from trimformer.report import RunReport, StagePoint, total_sparsity, write_report

# Stages whose saved model has a new shape: their speedup is measured; the others share it.
SHAPE_STAGES = {"heads": "heads", "distil": "heads", "ffn": "ffn", "final_distil": "ffn"}


def warn_off_target(achieved: float, target: float, heads: list[int], ffn: list[int],
                    fitted: tuple[int, int], model_dir: Path) -> None:
    """Say so when the final model's speedup is more than 10% off the target, and what may explain it."""
    uneven = len(set(heads)) > 1 or len(set(ffn)) > 1
    why = (f"its layers keep heads {heads} and FFN {ffn}, spread from the {fitted[0]} heads and {fitted[1]} "
           "channels a layer the target was fitted on (target.allocation=uniform keeps those)" if uneven else
           f"its layers keep the {fitted[0]} heads and {fitted[1]} channels the target was fitted on, so the "
           "timing strayed or the latency line misjudged this shape")
    log.warning("achieved x%.2f against the target x%.2f (%.0f%%): %s; `trimformer bench %s` re-times it",
                achieved, target, 100 * achieved / target, why, model_dir)


def summarize(run: Run) -> RunReport:
    """Write `<out>/model` (the final pruned model) and `report.{json,md,png}`; return the report."""
    out, recipe, task = run.out, run.recipe, run.task
    final_dir = out / "model"
    if final_dir.exists():
        shutil.rmtree(final_dir)
    shutil.copytree(run.stage_dir("final_distil") / "model", final_dir)
    dense = load_pruned(run.stage_dir("finetune") / "model")
    pruned = load_pruned(final_dir)
    pruned_metrics = run.evaluate(load_pruned(final_dir, run.device))  # latency below on bench.device
    bench = recipe.bench
    speedups: dict[str, float] = {}
    latency = None
    for shape_stage in ("heads", "ffn"):
        candidate = pruned if shape_stage == "ffn" else load_pruned(run.stage_dir(shape_stage) / "model")
        comparison = compare_latency(dense, candidate, bench.batch_size, bench.seq_len, bench.threads,
                                     bench.warmup, bench.repeats, device=bench.device, bf16=bench.bf16,
                                     compile=bench.compile, passes=bench.passes if shape_stage == "ffn" else 1)
        speedups[shape_stage] = comparison.speedup
        if shape_stage == "ffn":
            latency = comparison
        passes = ", ".join(f"x{s:.2f}" for s in comparison.pass_speedups)
        log.info("speedup after %s: x%.2f%s", shape_stage, comparison.speedup,
                 f" (median of passes {passes})" if len(comparison.pass_speedups) > 1 else "")
    sizes = size_report(dense, pruned, bench.batch_size, bench.seq_len)
    heads, ffn = layer_widths(pruned)
    main = task.main_metric
    stage_seconds = {s: float(run.done(s)["seconds"]) for s in STAGES}
    points = []
    for stage in STAGES:
        done = run.done(stage)
        model_dir = run.stage_dir(stage) / "model"
        sparsity = total_sparsity(dense, load_pruned(model_dir)) if model_dir.is_dir() else 0.0
        speedup = speedups[SHAPE_STAGES[stage]] if stage in SHAPE_STAGES else 1.0
        points.append(StagePoint(stage=stage, metric=float(done["metrics"].get(main, float("nan"))),
                                 speedup=speedup, sparsity=sparsity, seconds=float(done["seconds"])))
    report = RunReport(
        task=task.name, model=run.options.model, main_metric=main,
        dense_metrics=run.done("finetune")["metrics"], pruned_metrics=pruned_metrics,
        total_sparsity=total_sparsity(dense, pruned), heads_per_layer=heads, ffn_per_layer=ffn,
        params_before=sizes.params_before, params_after=sizes.params_after, flops_ratio=sizes.flops_ratio,
        latency_dense_s=latency.reference.median_s, latency_pruned_s=latency.candidate.median_s,
        speedup=latency.speedup, stage_seconds=stage_seconds, model_dir=str(Path(final_dir).resolve()),
        points=points, extra={"recipe": recipe.name, "bench_batch_size": bench.batch_size,
                              "bench_seq_len": bench.seq_len, "bench_repeats": bench.repeats,
                              "speedup_passes": list(latency.pass_speedups),
                              "bench_device": bench.device, "bench_bf16": bench.bf16, "bench_compile": bench.compile,
                              # what the stages that keep their best weights chose them on (holdout.py)
                              "chosen_on": "holdout" if run.data.rows.holdout_rows else "dev",
                              "holdout_rows": run.data.rows.holdout_rows},
    )
    target = out / "target.json"
    if target.is_file():
        import json

        choice = json.loads(target.read_text())
        applied = choice.get("applied", choice)  # the shape pruned to (re-split from the one timed)
        report.extra.update({"target_speedup": choice["target_speedup"], "target_heads": applied["heads"],
                             "target_ffn": applied["ffn"], "calibrated_speedup": choice["measured_speedup"],
                             "achieved_over_target": latency.speedup / choice["target_speedup"],
                             "attention_allocation": recipe.attention.allocation,
                             "ffn_allocation": recipe.ffn.allocation})
        if abs(latency.speedup / choice["target_speedup"] - 1) > 0.1:
            warn_off_target(latency.speedup, choice["target_speedup"], heads, ffn,
                            run.target_shape or (choice["heads"], choice["ffn"]), final_dir)
    write_report(report, out)
    return report
