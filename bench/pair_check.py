"""Paired check of two finished points of one task (an A/B of one switch): where does B's gain live?

    python bench/pair_check.py --task cola --stage heads \\
        runs/cpu/cola/taylor_ra5-3+regs1024:runs/cpu/cola/taylor_ra5-3+rh2s1024 [more A:B pairs] \\
        [--train-rows 1000] [--out bench/results/rh2-cpu/pair_check-cola-heads.json]

Loads both points' models after `--stage` and the task's fine-tuned model (the teacher), and per pair
reports B minus A on (i) training rows: the task loss, the KD divergence from the teacher (KL, or the
squared difference of scores for a regression) and the main metric, with the paired z of each
per-example difference (mean over its standard error); (ii) dev: the same, plus for a binary task the
threshold-free AUC of the class-1 margin and the best main metric over thresholds (an oracle: it shows
how much of a metric gap is where the decision threshold lands, not how well the examples are ranked).
A criterion that could choose between A and B before the dev set is seen has to come from (i).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from transformers import AutoTokenizer

from trimformer.glue import GlueDataset, compute_metrics, encode, get_task, load_split, make_collator
from trimformer.io import load_pruned, write_json
from trimformer.train import predict

ROOT = Path(__file__).resolve().parent.parent


def per_example(spec, logits: np.ndarray, teacher: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Task loss and divergence from the teacher, one value per example."""
    out, ref = torch.from_numpy(logits).float(), torch.from_numpy(teacher).float()
    if spec.is_regression:
        return {"loss": ((out[:, 0] - torch.from_numpy(labels).float()) ** 2).numpy(),
                "kd": ((out[:, 0] - ref[:, 0]) ** 2).numpy()}
    kl = (ref.softmax(-1) * (ref.log_softmax(-1) - out.log_softmax(-1))).sum(-1)
    return {"loss": F.cross_entropy(out, torch.from_numpy(labels).long(), reduction="none").numpy(),
            "kd": kl.numpy()}


def best_threshold_metric(spec, logits: np.ndarray, labels: np.ndarray) -> float:
    """The main metric at the best of 97 margin quantiles as the decision threshold (an oracle)."""
    margin = logits[:, 1] - logits[:, 0]
    best = -math.inf
    for q in np.quantile(margin, np.linspace(0.02, 0.98, 97)):
        shifted = np.stack([np.zeros_like(margin), margin - q], axis=1)
        best = max(best, compute_metrics(spec, shifted, labels)[spec.main_metric])
    return best


def side(spec, model, data, collate, teacher: np.ndarray, labels: np.ndarray) -> dict:
    """One model on one set: its main metric, per-example losses and (binary tasks) AUC and oracle."""
    logits, _ = predict(model, data, collate)
    row = {"metric": compute_metrics(spec, logits, labels)[spec.main_metric],
           **per_example(spec, logits, teacher, labels)}
    if spec.num_labels == 2:
        row["auc"] = float(roc_auc_score(labels, logits[:, 1] - logits[:, 0]))
        row["best_threshold_metric"] = best_threshold_metric(spec, logits, labels)
    return row


def compare(a: dict, b: dict) -> dict:
    """B minus A: metric points, and for the per-example losses the relative change and paired z
    (positive z: B lower, i.e. better)."""
    row = {"metric_gain": round(100 * (b["metric"] - a["metric"]), 2)}
    for key in ("loss", "kd"):
        diff = a[key] - b[key]
        row[f"{key}_rel_gain"] = round(float(diff.mean() / a[key].mean()), 4)
        row[f"{key}_z"] = round(float(diff.mean() / (diff.std(ddof=1) / math.sqrt(len(diff)))), 2)
    for key in ("auc", "best_threshold_metric"):
        if key in a:
            row[f"{key}_a"], row[f"{key}_b"] = round(a[key], 4), round(b[key], 4)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("pairs", nargs="+", help="A:B, two point folders")
    parser.add_argument("--stage", default="ffn", help="whose model: a stage name, or 'final' for <point>/model")
    parser.add_argument("--teacher", help="the fine-tuned model (default: the first A's finetune stage)")
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    spec = get_task(args.task)
    pairs = [tuple(p.split(":")) for p in args.pairs]
    if any(len(p) != 2 for p in pairs):
        parser.error("each pair is A:B")
    teacher_dir = Path(args.teacher or Path(pairs[0][0]) / "stages" / "finetune" / "model")
    teacher = load_pruned(teacher_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)  # saved with every model
    collate = make_collator(tok)
    examples = load_split(spec, "train", args.glue_dir)
    random.Random(7).shuffle(examples)
    sets = {"train": GlueDataset(encode(tok, spec, examples[: args.train_rows], 128)),
            "dev": GlueDataset(encode(tok, spec, load_split(spec, "dev", args.glue_dir), 128))}
    reference = {name: predict(teacher, data, collate) for name, data in sets.items()}

    def model_of(point: str):
        folder = Path(point) / "model" if args.stage == "final" else Path(point) / "stages" / args.stage / "model"
        return load_pruned(folder)

    rows = []
    for a, b in pairs:
        row = {"a": a, "b": b}
        models = (model_of(a), model_of(b))
        for name, data in sets.items():
            teacher_logits, labels = reference[name]
            a_side, b_side = (side(spec, m, data, collate, teacher_logits, labels) for m in models)
            row[name] = compare(a_side, b_side)
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json(Path(args.out), {"command": "python " + " ".join(sys.argv).replace(str(ROOT) + "/", ""),
                                "task": args.task, "stage": args.stage, "train_rows": args.train_rows,
                                "rows": rows})


if __name__ == "__main__":
    main()
