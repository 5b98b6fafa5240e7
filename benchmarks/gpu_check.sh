#!/usr/bin/env bash
# The inference table of benchmarks/inference.py on a GPU, in well under 8 minutes.
# Needs python3 with CUDA torch, diffusers and transformers importable (the project's venv on a GPU
# node, or wheels installed into PYTHONPATH); nothing is downloaded. Writes
# benchmarks/results/inference_gpu.md (or $OUT/inference_gpu.md when $OUT is set) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
out="${OUT:-benchmarks/results}/inference_gpu.md"
export PYTHONPATH="$PWD:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
for dtype in fp16 fp32; do
  timeout 200 python3 -m benchmarks.inference --device cuda --dtype "$dtype" --sizes 64 \
    --repeats 20 --teacher-repeats 3 --out "${out%.md}_$dtype.md"
  cat "${out%.md}_$dtype.md"
done
