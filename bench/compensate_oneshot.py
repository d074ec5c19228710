"""One-shot FFN cuts with and without least-squares compensation (`ffn.compensate=lstsq`).

Takes a saved model (e.g. a run's `stages/distil/model`), cuts the same share of FFN channels in
every layer with no training, once plainly and once after re-fitting each second FFN linear by least
squares (compensate.py), and evaluates both on the task's full dev set. Channels are ranked by
activation-weighted column norm, ||W2[:, j]|| * RMS(h_j) over the same training tokens (a
gradient-free proxy; both arms cut the very same channels, so only the re-fit differs).

    python bench/compensate_oneshot.py --model runs/frontier/stsb/taylor-3/stages/distil/model --task stsb

writes `bench/results/compensate_oneshot/<task>.json` with the command. With `--train-fraction 0.5`
both arms of that cut are then trained (task loss only, lr 3e-5, batch 32) for `--train-rounds`
spells of `--train-steps` steps, evaluated after each: does the re-fit's lead survive training?
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from trimformer import glue
from trimformer.compensate import collect_channel_stats, compensate_linear, sample_batches
from trimformer.io import load_pruned, write_json
from trimformer.shrink import shrink
from trimformer.structure import model_structure
from trimformer.train import TrainSettings, evaluate, fit

ROOT = Path(__file__).resolve().parents[1]


def cut(model_dir: str, stats: dict, fraction: float, refit: bool) -> torch.nn.Module:
    """The saved model with `fraction` of each layer's FFN channels removed (`shrink`), the second
    FFN linear re-fitted first if asked."""
    model, masks = load_pruned(model_dir), {}
    for layer in model_structure(model).layers:
        linear, layer_stats = model.get_submodule(layer.ffn_out), stats[layer.ffn_out]
        rms = torch.sqrt(torch.diagonal(layer_stats.gram) / layer_stats.count).float()
        score = linear.weight.detach().norm(dim=0) * rms
        keep = torch.ones(linear.in_features, dtype=torch.bool)
        keep[score.argsort()[:int(fraction * linear.in_features)]] = False
        if refit:
            compensate_linear(linear, keep, layer_stats)
        weight = model.get_submodule(layer.ffn_in).weight
        masks[layer.ffn_in] = {"weight": keep[:, None].to(weight.dtype).expand_as(weight).clone()}
    shrink(model, masks)
    return model


def train_curve(model: torch.nn.Module, task: glue.TaskSpec, train_set, dev: dict, collate, steps: int,
                rounds: int, arm: str) -> list[float]:
    """The model's dev metric now and after each of `rounds` spells of `steps` training steps (task
    loss, lr 3e-5, batch 32)."""
    curve = [evaluate(model, task, dev, collate, 128)[task.main_metric]]
    for spell in range(rounds):
        fit(model, task, train_set, collate, TrainSettings(max_steps=steps, lr=3e-5, seed=1024 + spell),
            desc=f"{arm} {spell + 1}")
        curve.append(evaluate(model, task, dev, collate, 128)[task.main_metric])
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved (pruned) model folder")
    parser.add_argument("--task", required=True)
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.5, 0.8])
    parser.add_argument("--rows", type=int, default=512, help="training rows the moments come from")
    parser.add_argument("--train-fraction", type=float, help="also train both arms of this cut")
    parser.add_argument("--train-steps", type=int, default=40)
    parser.add_argument("--train-rounds", type=int, default=4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compensate_oneshot"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    start = time.perf_counter()
    task, tokenizer = glue.get_task(args.task), AutoTokenizer.from_pretrained(args.model)
    encode = lambda split, n=None: glue.GlueDataset(  # noqa: E731
        glue.encode(tokenizer, task, glue.load_split(task, split, args.glue_dir, n), 128))
    collate = glue.make_collator(tokenizer)
    dev = {split: encode(split) for split in task.dev_splits}
    train_set = encode("train")
    batches = sample_batches(train_set, args.rows, 128, collate, seed=1)
    base = load_pruned(args.model)
    stats = collect_channel_stats(base, [layer.ffn_out for layer in model_structure(base).layers], batches)
    rows = [{"fraction": 0.0, "plain": evaluate(base, task, dev, collate, 128)[task.main_metric]}]
    for fraction in args.fractions:
        metric = {arm: evaluate(cut(args.model, stats, fraction, arm == "lstsq"), task, dev, collate, 128)
                  [task.main_metric] for arm in ("plain", "lstsq")}
        rows.append({"fraction": fraction, **metric})
        print(f"{args.task} cut {fraction:.0%}: plain {metric['plain']:.4f}, lstsq {metric['lstsq']:.4f}", flush=True)
    trained = {}
    if args.train_fraction is not None:
        for arm in ("plain", "lstsq"):
            model = cut(args.model, stats, args.train_fraction, arm == "lstsq")
            trained[arm] = curve = train_curve(model, task, train_set, dev, collate, args.train_steps,
                                               args.train_rounds, arm)
            print(f"{args.task} cut {args.train_fraction:.0%} then trained, {arm}: "
                  + " ".join(f"{m:.4f}" for m in curve), flush=True)
    result = {"task": args.task, "model": args.model, "main_metric": task.main_metric, "rows": rows,
              "trained": {"fraction": args.train_fraction, "steps": args.train_steps, "curves": trained}
              if trained else None,
              "moment_rows": args.rows, "tokens": next(iter(stats.values())).count,
              "seconds": time.perf_counter() - start, "command": "python " + " ".join(sys.argv)}
    write_json(Path(args.out) / f"{args.task}.json", result)


if __name__ == "__main__":
    main()
