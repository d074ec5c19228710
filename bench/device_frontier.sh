#!/usr/bin/env bash
# The frontier on a lent GPU (the `device` tool's machine): bench/device_frontier.py over all five tasks.
# Carried beside the working tree: .whl (pydantic and its needs, absent there), .devcarry/model (the
# packaged MiniLM as fp16 safetensors to fit the transfer limit; loaded as float32) and .devcarry/glue
# (train and dev TSVs of the five tasks), all made by bench/device_carry.sh. The latency-target shapes
# come from bench/results/frontier_targets (measured on the CPU that times the points). Writes
# $OUT/frontier.tar.gz: results/ go to bench/results/frontier, work/ to runs/frontier-gpu, then
# `python bench/frontier.py --remeasure --work runs/frontier-gpu` here. METHODS and TASKS narrow the sweep
# (e.g. METHODS=taylor_reg TASKS=stsb).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
python3 bench/device_frontier.py --model .devcarry/model --glue-dir .devcarry/glue --out "$OUT/frontier.tar.gz" \
  --slots "${SLOTS:-12}" --deadline "${DEADLINE:-530}" ${METHODS:+--methods $METHODS} ${TASKS:+--tasks $TASKS} --machine "$gpu, bf16 autocast, up to ${SLOTS:-12} points at once"
