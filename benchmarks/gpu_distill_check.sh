#!/usr/bin/env bash
# One SD2.1-base-shaped distillation step (random weights) under ZeRO-2 and ZeRO-3 on one GPU, with
# step time and peak GPU memory, in well under 8 minutes. Needs python3 with CUDA torch, diffusers,
# transformers, peft and deepspeed importable (the project's venv on a GPU node); nothing is downloaded,
# except that the first run builds the CLIP tokenizer cache (set LOOPFREE_CLIP_BPE on an offline node).
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH="$PWD:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 420 python3 -m benchmarks.gpu_distill_check --device cuda --preset sd21_base --job jobs/distill.yaml --stages 2 3 \
  | tee "${OUT:-benchmarks/results}/gpu_distill_check.txt"
