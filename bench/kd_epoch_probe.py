"""Is CoLA's loss in the attention epoch the pruning or the training? One epoch of that stage's training
(KD at T=2 with the task loss weighted `alpha`, lr 3e-5 decaying, batch 32, the protocol's length 128)
on the dense fine-tuned model, nothing pruned, then the dev metrics again.

    python bench/kd_epoch_probe.py --alpha 0.1 --seed 1024 [--finetune runs/cpu/cola/finetune] [--task cola]

`--finetune` is a frontier fine-tune folder (its `stages/finetune/model` and `teacher_logits.safetensors`).
Prints one JSON line; bench/results/kd_epoch_probe.json collects them with the commands.
"""

from __future__ import annotations

import argparse
import json

import torch

from trimformer import glue
from trimformer.distill import load_teacher_logits
from trimformer.io import load_pruned
from trimformer.pipeline import RunOptions, load_data
from trimformer.recipe import load_recipe
from trimformer.train import TrainSettings, evaluate, fit


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--alpha", type=float, required=True, help="task-loss weight (1: labels alone)")
    parser.add_argument("--seed", type=int, default=1024)
    parser.add_argument("--finetune", default="runs/cpu/cola/finetune")
    parser.add_argument("--task", default="cola")
    parser.add_argument("--glue-dir", default="../shared/glue")
    args = parser.parse_args()
    torch.set_num_threads(1)  # two arms run at once on the 2-core VM
    model_dir = f"{args.finetune}/stages/finetune/model"
    recipe = load_recipe("default", ["max_train_samples=null", "max_seq_length=128", "select_rows=0"])
    data = load_data(RunOptions(model=model_dir, task=args.task, output_dir="unused", recipe=recipe,
                                glue_dir=args.glue_dir))
    task, model = glue.get_task(args.task), load_pruned(model_dir)
    before = evaluate(model, task, data.dev, data.collate)
    logits = load_teacher_logits(f"{args.finetune}/teacher_logits.safetensors", expected_rows=len(data.train))
    fit(model, task, data.train.with_teacher_logits(logits), data.collate,
        TrainSettings(epochs=1, lr=3e-5, distill=True, alpha=args.alpha, temperature=2.0, seed=args.seed))
    print(json.dumps({"task": args.task, "alpha": args.alpha, "seed": args.seed, "before": before,
                      "after": evaluate(model, task, data.dev, data.collate)}))


if __name__ == "__main__":
    main()
