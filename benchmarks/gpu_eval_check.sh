#!/usr/bin/env bash
# The paper's timing columns on a GPU: benchmarks/latency_memory.py on the SD2.1-base architecture at 512 px
# (random weights), fp16 then fp32, batch 1, in about 2 minutes. Needs python3 with CUDA torch, diffusers and
# transformers importable; nothing is downloaded, so an offline node gets the CLIP tokenizer cache through
# LOOPFREE_CACHE (or LOOPFREE_CLIP_BPE). Writes $OUT (default benchmarks/results)/latency_memory_cuda_<dtype>.md.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
out="${OUT:-benchmarks/results}"
export PYTHONPATH="$PWD:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for dtype in fp16 fp32; do
  timeout 150 python3 -m benchmarks.latency_memory --preset sd21_base --device cuda --dtype "$dtype" --repeats 5 \
    --out "$out/latency_memory_cuda_$dtype.md"
done
