#!/usr/bin/env bash
# One whole `trimformer run --target-speedup` on a lent GPU with the speedup timed there: trained in bf16,
# shapes chosen and the report's speedup timed under bf16 autocast and torch.compile (CUDA graphs) at
# batch 256 x 128 (at 32 x 128 even one head and 64 FFN channels a layer buy only x1.4 on an H100:
# bench/results/gpu_latency). Then `trimformer bench` times the saved model again in its own process.
# Needs what bench/device_carry.sh puts beside the working tree (.whl, .devcarry); run through the
# `device` tool:
#   run(command="TARGET=1.5 bash bench/gpu_target_run.sh", carry=[".whl", ".devcarry"], timeout_s=380)
# Writes the report, target choice, log and the second timing under $OUT (the weights stay there).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD/src || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
target=${TARGET:-1.5}
run=/tmp/gpu_target_run
python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
SECONDS=0
printf '{"command": "TARGET=%s bash bench/gpu_target_run.sh", "device_tool_carry": [".whl", ".devcarry"]}\n' "$target" \
  > "$OUT/command.json"
python3 -m trimformer run --model .devcarry/model --task sst2 --glue-dir .devcarry/glue --recipe trimformer \
  --output-dir "$run" --bf16 --target-speedup "$target" bench.device=cuda bench.bf16=true bench.compile=true \
  bench.batch_size=256 bench.repeats=50 ffn.multiple=64 2>&1 | grep -v "it/s\]" | tail -60
echo "run: rc=${PIPESTATUS[0]} in ${SECONDS}s"
cp "$run"/report.json "$run"/report.md "$run"/report.png "$run"/target.json "$run"/run.log "$OUT"/ 2>/dev/null
python3 -m trimformer bench "$run/model" --device cuda --bf16 --compile --batch-size 256 --seq-len 128 \
  --repeats 50 --passes 3 > "$OUT/bench_again.json" && cat "$OUT/bench_again.json"
echo "total ${SECONDS}s"
