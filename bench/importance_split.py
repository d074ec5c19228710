"""Diagnostic: how would first-order Taylor importance split a FLOPs budget between heads and FFN
channels? (bench/results/combo-cpu/README.md; the answer argued against building it.)

    python bench/importance_split.py cola runs/cpu/cola/finetune/stages/finetune/model 40

Over N training batches of 32 it sums, per unit, |sum of w * dL/dw| over the unit's columns of the
attention output (a head) or of the second FFN linear (a channel): the first-order loss change of
zeroing that unit. Then for the budgets of the latency-target shapes it finds the total head count
whose cheapest-to-lose heads and channels lose the least importance.
"""

from __future__ import annotations

import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trimformer.glue import encode, get_task, load_split, make_collator
from trimformer.scoring import ChannelTaylorImportance
from trimformer.structure import model_structure
from trimformer.target import flops_fraction, layer_flops
from trimformer.train import model_inputs, task_loss


def main() -> None:
    task, folder, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    spec = get_task(task)
    model = AutoModelForSequenceClassification.from_pretrained(folder).train()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    st = model_structure(model)
    examples = load_split(task, "train")  # --glue-dir default: $GLUE_DIR, else ../shared/glue
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(0))[: batches * 32].tolist()
    features, collate = encode(tokenizer, task, [examples[i] for i in order]), make_collator(tokenizer)
    n_layers, n_heads, ffn_width = len(st.layers), st.num_heads, st.intermediate_size
    head_scores = torch.zeros(n_layers, n_heads)
    channel_taylor = ChannelTaylorImportance.for_ffn(model, [layer.ffn_in for layer in st.layers])
    for b in range(batches):
        batch = collate(features[b * 32:(b + 1) * 32])
        model.zero_grad()
        task_loss(spec, model(**model_inputs(batch)).logits, batch["labels"]).backward()
        channel_taylor.accumulate()
        for i, layer in enumerate(st.layers):
            out = model.get_submodule(layer.attn_out).weight
            head_scores[i] += (out * out.grad).sum(0).view(n_heads, st.head_dim).sum(1).abs()
    channel_scores = torch.stack([channel_taylor.sums[layer.ffn_in] for layer in st.layers])
    seq = 128
    heads, channels = head_scores.flatten().sort().values, channel_scores.flatten().sort().values
    per_head, per_channel = layer_flops(st, 1, 0, seq), layer_flops(st, 0, 1, seq)
    dense = n_layers * layer_flops(st, n_heads, ffn_width, seq)
    for shape in [(4, 473), (6, 323), (2, 279), (3, 204)]:  # x3 and x5, head ratio 1 and 2
        budget = flops_fraction(st, *shape, seq) * dense
        best = None
        for kept_heads in range(n_layers, n_layers * n_heads + 1):
            kept_channels = int((budget - kept_heads * per_head) // per_channel)
            if not n_layers <= kept_channels <= n_layers * ffn_width:
                continue
            lost = (heads[: n_layers * n_heads - kept_heads].sum()
                    + channels[: n_layers * ffn_width - kept_channels].sum())
            if best is None or lost < best[0]:
                best = (float(lost), kept_heads, kept_channels)
        print(f"budget of {shape[0]} heads / {shape[1]} channels per layer: least importance lost keeping "
              f"{best[1] / n_layers:.1f} heads and {best[2] / n_layers:.0f} channels per layer")


if __name__ == "__main__":
    main()
