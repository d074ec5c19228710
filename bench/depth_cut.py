"""Probe: start a frontier point from its fine-tune cut to the first k layers (the top ones dropped).

    python bench/depth_cut.py runs/cpu/cola/taylor-5 runs/cpu/cola/depth3 0,1,2

copies the point's fine-tune stage and teacher logits (the full model's, so every later stage
distils from it) into a new point folder whose fine-tuned model keeps only the listed layers, and
prints that model's measured speedup over the full one (32 x 128, one thread) and the relative
`--target-speedup` that makes the whole x5. Then run the point's `trimformer run` command on the new
folder with that target. Results: bench/results/combo-cpu/README.md.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer

from trimformer.bench import compare_latency
from trimformer.io import load_pruned, save_pruned


def main() -> None:
    source, out, keep = Path(sys.argv[1]), Path(sys.argv[2]), [int(i) for i in sys.argv[3].split(",")]
    torch.set_num_threads(1)
    (out / "stages").mkdir(parents=True)
    shutil.copytree(source / "stages" / "finetune", out / "stages" / "finetune")
    for name in ("teacher_logits.safetensors", "recipe.json"):
        shutil.copy(source / name, out / name)
    full = load_pruned(source / "stages" / "finetune" / "model")
    cut = load_pruned(source / "stages" / "finetune" / "model")
    encoder = cut.base_model.encoder
    encoder.layer = torch.nn.ModuleList([encoder.layer[i] for i in keep])
    cut.config.num_hidden_layers = len(keep)
    folder = out / "stages" / "finetune" / "model"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    shutil.rmtree(folder)
    save_pruned(cut, folder, tokenizer=tokenizer)
    speedup = compare_latency(full, load_pruned(folder), 32, 128, 1, warmup=1, repeats=7).speedup
    print(f"{len(keep)} layers: x{speedup:.3f} over the full model; --target-speedup {5 / speedup:.2f} for x5 overall")


if __name__ == "__main__":
    main()
