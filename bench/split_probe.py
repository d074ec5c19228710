"""Can a cheap one-shot probe tell, per task, how a latency budget should be split between heads and
FFN channels? `target.head_ratio=2` (twice the heads' share) gains on CoLA at x3 and loses on SST-2
(`bench/results/rh2-cpu`), so a fixed split cannot be best everywhere. This scores, on a
task's fine-tuned model, every head and FFN channel by first-order Taylor importance on training
batches, then for each candidate split keeps the top heads and channels across all layers (the shape
`--target-speedup` would choose), zeroes the rest and measures, on held-out training rows, how far the
outputs move from the dense model's (KL, or MSE for a regression) and the summed importance removed.
No training: a probe is only useful if its ranking of the splits matches what the full runs found.

    python bench/split_probe.py --work runs/cpu --tasks cola mrpc rte sst2 stsb --target 3 --ratios 0.5 1 2

It reads `<work>/<task>/finetune/stages/finetune/model` and `<work>/targets/x<target>.json` (the
latency line of `--target-speedup`) and writes `bench/results/split_probe.json`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trimformer.allocate import global_head_keep
from trimformer.glue import GlueDataset, encode, get_task, load_split, make_collator
from trimformer.io import write_json
from trimformer.structure import model_structure
from trimformer.target import shape_on_line
from trimformer.train import model_inputs, predict, task_loss

ROOT = Path(__file__).resolve().parent.parent


def batches(features: list, collate, size: int):
    for start in range(0, len(features), size):
        yield collate(features[start:start + size])


def taylor_scores(model, st, spec, train_batches) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer: |sum of w * dL/dw| over each head's columns of the attention output and each FFN
    channel's column of the FFN output, summed over batches: the first-order change of the loss when
    that head's or channel's contribution is zeroed, which is what the probe then does."""
    heads = [torch.zeros(st.num_heads) for _ in st.layers]
    channels = [torch.zeros(st.intermediate_size) for _ in st.layers]
    for batch in train_batches:
        model.zero_grad()
        task_loss(spec, model(**model_inputs(batch)).logits, batch["labels"]).backward()
        with torch.no_grad():
            for i, layer in enumerate(st.layers):
                attn_out = model.get_submodule(layer.attn_out).weight
                ffn_out = model.get_submodule(layer.ffn_out).weight
                heads[i] += (attn_out * attn_out.grad).sum(0).reshape(st.num_heads, -1).sum(1).abs()
                channels[i] += (ffn_out * ffn_out.grad).sum(0).abs()
    model.zero_grad()
    return heads, channels


@contextmanager
def zeroed(model, st, keep_heads: list[torch.Tensor], keep_channels: list[torch.Tensor]):
    """Inside: the heads and FFN channels whose keep is 0 contribute nothing (their columns of the
    attention and FFN outputs are zero, as if cut; the output biases stay). After: the weights as before."""
    saved = {}
    with torch.no_grad():
        for layer, kh, kc in zip(st.layers, keep_heads, keep_channels, strict=True):
            for name, keep in ((layer.attn_out, kh.repeat_interleave(st.head_dim)), (layer.ffn_out, kc)):
                weight = model.get_submodule(name).weight
                saved[name] = weight.clone()
                weight.mul_(keep.to(weight.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                model.get_submodule(name).weight.copy_(weight)


def outputs(model, features: list, collate) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels over `features`, in order (`trimformer.train.predict`)."""
    logits, labels = predict(model, GlueDataset(features), collate)
    return torch.from_numpy(logits), torch.from_numpy(labels)


def distance(spec, logits: torch.Tensor, dense: torch.Tensor) -> float:
    """How far the outputs moved from the dense model's: KL(dense || probed), or MSE for a regression."""
    if spec.is_regression:
        return F.mse_loss(logits.squeeze(-1), dense.squeeze(-1)).item()
    return F.kl_div(logits.log_softmax(-1), dense.log_softmax(-1), log_target=True, reduction="batchmean").item()


def probe_split(model, st, spec, heads, channels, n_heads, n_ffn, features, collate, dense) -> dict:
    """Keep the top `n_heads` heads and `n_ffn` channels per layer on average (ranked across layers,
    each layer keeping its best), zero the rest and measure the outputs on the held-out rows."""
    keep_heads = global_head_keep(heads, 1 - n_heads / st.num_heads)
    keep_channels = global_head_keep(channels, 1 - n_ffn / st.intermediate_size)
    with zeroed(model, st, keep_heads, keep_channels):
        logits, labels = outputs(model, features, collate)
    pairs = zip([*heads, *channels], [*keep_heads, *keep_channels], strict=True)
    removed = sum(float(score[keep == 0].sum()) for score, keep in pairs)
    return {"heads_kept": [int(k.sum()) for k in keep_heads], "ffn_kept": [int(k.sum()) for k in keep_channels],
            "output_distance": distance(spec, logits, dense), "task_loss": task_loss(spec, logits, labels).item(),
            "removed_taylor": removed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default=str(ROOT / "runs" / "cpu"))
    parser.add_argument("--tasks", nargs="+", default=["cola", "mrpc", "rte", "sst2", "stsb"])
    parser.add_argument("--target", type=float, default=3.0)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--score-rows", type=int, default=1024, help="training rows the Taylor scores see")
    parser.add_argument("--holdout-rows", type=int, default=1024, help="other training rows the splits are probed on")
    parser.add_argument("--glue-dir", default=str(ROOT.parent / "shared" / "glue"))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "split_probe.json"))
    args = parser.parse_args()
    torch.manual_seed(1024)
    work = Path(args.work)
    target = json.loads((work / "targets" / f"x{args.target:g}.json").read_text())
    rows = []
    for task in args.tasks:
        start = time.perf_counter()
        spec = get_task(task)
        model_dir = work / task / "finetune" / "stages" / "finetune" / "model"
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        examples = load_split(task, "train", args.glue_dir)
        random.Random(1024).shuffle(examples)
        features = encode(tokenizer, task, examples[: args.score_rows + args.holdout_rows], 128)
        scored, held = features[: args.score_rows], features[args.score_rows:]
        collate = make_collator(tokenizer)
        st = model_structure(model)
        heads, channels = taylor_scores(model, st, spec, batches(scored, collate, 32))
        dense, _ = outputs(model, held, collate)
        for ratio in args.ratios:
            n_heads, n_ffn = shape_on_line(st, target["calibration"], args.target, target["seq_len"], 1, ratio)
            row = {"task": task, "target": args.target, "head_ratio": ratio, "heads": n_heads, "ffn": n_ffn,
                   **probe_split(model, st, spec, heads, channels, n_heads, n_ffn, held, collate, dense)}
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("task", "head_ratio", "heads", "ffn", "output_distance",
                                                  "task_loss", "removed_taylor")}), flush=True)
        print(f"{task}: {time.perf_counter() - start:.0f} s", flush=True)
    write_json(Path(args.out), {"command": "python " + " ".join(sys.argv).replace(str(ROOT) + "/", ""),
                                "torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows})


if __name__ == "__main__":
    main()
