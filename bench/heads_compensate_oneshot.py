"""One-shot head cuts with and without a least-squares re-fit of each layer's attention output
projection: does re-fitting the kept heads' output columns and bias, so the layer emits what it did
with the heads that go, keep more of the model than cutting them plainly?

Takes a saved model (the fine-tune) and a run's attention masks (`stages/attention/masks.safetensors`,
which heads each layer keeps), cuts those heads from the model with no training, once plainly and
once after the re-fit (compensate.py on `attention.output.dense`, whose input channels are the
heads' context vectors; moments over `--rows` training rows of the uncut model), and evaluates both
on the task's full dev set. Then both arms train for `--train-rounds` spells of `--train-steps` steps
(task loss, lr 3e-5, batch 32), evaluated after each: does a lead survive training?

    python bench/heads_compensate_oneshot.py --model runs/cpu/cola/finetune/model \\
        --masks runs/cpu/cola/taylor_reg-3/stages/attention/masks.safetensors --task cola

writes `bench/results/heads_compensate_oneshot/<task>.json` with the command.
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
from trimformer.masks import load_masks
from trimformer.shrink import shrink
from trimformer.structure import model_structure
from trimformer.train import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compensate_oneshot import train_curve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cut(model_dir: str, masks: dict, stats: dict, refit: bool) -> torch.nn.Module:
    """The saved model with the heads the masks remove cut out (`shrink`), each layer's attention
    output projection re-fitted first if asked."""
    model = load_pruned(model_dir)
    if refit:
        for layer in model_structure(model).layers:
            keep = masks[layer.attn_out]["weight"].bool().any(dim=0)  # input columns of kept heads
            compensate_linear(model.get_submodule(layer.attn_out), keep, stats[layer.attn_out])
    shrink(model, masks)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a saved model folder (the fine-tune)")
    parser.add_argument("--masks", required=True, help="an attention stage's masks.safetensors")
    parser.add_argument("--task", required=True)
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--rows", type=int, default=512, help="training rows the moments come from")
    parser.add_argument("--train-steps", type=int, default=67)
    parser.add_argument("--train-rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "heads_compensate_oneshot"))
    args = parser.parse_args()
    from transformers import AutoTokenizer

    start = time.perf_counter()
    torch.manual_seed(0)
    task, tokenizer = glue.get_task(args.task), AutoTokenizer.from_pretrained(args.model)
    encode = lambda split: glue.GlueDataset(  # noqa: E731
        glue.encode(tokenizer, task, glue.load_split(task, split, args.glue_dir), 128))
    collate = glue.make_collator(tokenizer)
    dev = {split: encode(split) for split in task.dev_splits}
    train_set = encode("train")
    masks = load_masks(args.masks)
    base = load_pruned(args.model)
    structure = model_structure(base)
    heads = [int(masks[layer.attn_out]["weight"].bool().any(dim=0).sum()) // structure.head_dim
             for layer in structure.layers]
    stats = collect_channel_stats(base, [layer.attn_out for layer in structure.layers],
                                  sample_batches(train_set, args.rows, 128, collate, seed=1))
    dense = evaluate(base, task, dev, collate, 128)[task.main_metric]
    curves = {}
    for arm in ("plain", "lstsq"):
        model = cut(args.model, masks, stats, arm == "lstsq")
        curves[arm] = curve = train_curve(model, task, train_set, dev, collate, args.train_steps,
                                          args.train_rounds, arm)
        print(f"{args.task} heads {heads}, {arm}: " + " ".join(f"{m:.4f}" for m in curve), flush=True)
    result = {"task": args.task, "model": args.model, "masks": args.masks, "heads_per_layer": heads,
              "main_metric": task.main_metric, "dense": dense,
              "curves": curves, "train_steps": args.train_steps, "moment_rows": args.rows,
              "tokens": next(iter(stats.values())).count, "seconds": time.perf_counter() - start,
              "command": "python " + " ".join(sys.argv)}
    write_json(Path(args.out) / f"{args.task}.json", result)


if __name__ == "__main__":
    main()
