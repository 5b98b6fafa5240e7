#!/usr/bin/env bash
# The whole GPU suite (docs/scaling.md's throughput target) in one script, under 8 minutes on one H200-class GPU:
#  1. distillation throughput at the paper's settings: SD2.1-base shape, 512 px, 8 samples per GPU, the
#     platform's engines and loop body with jobs/distill.yaml's generated DeepSpeed config; ZeRO-2 and
#     ZeRO-3, student gradient checkpointing on and off; samples/s, step split, peak memory;
#  2. inference throughput: TiUE, the 1-step model and the 4-step teacher at batch 1, 8 and 32 (fp16,
#     512 px), with encoder/decoder FLOPs and TiUE's FLOP bound relative to the 1-step model.
# Needs python3 with CUDA torch, diffusers, transformers, peft and deepspeed (the project's venv on a GPU
# node); nothing is downloaded. Writes $OUT/gpu_suite.md (default benchmarks/results/) and prints it.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  echo "# GPU suite ($(date -u +%F))"; echo
  echo "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"; echo
  echo "## Distillation, batch 8 per GPU, 512 px (\`python -m benchmarks.gpu_distill_check --device cuda --batch 8\`)"; echo
  timeout 300 python3 -m benchmarks.gpu_distill_check --device cuda --batch 8 --steps 3 --stages 2 3 \
    --checkpointing on off 2>"$out/gpu_suite_distill.err" || echo "(distillation part ended with status $?, see gpu_suite_distill.err)"
  echo
} | tee "$out/gpu_suite.md"
timeout 150 python3 -m benchmarks.inference --device cuda --dtype fp16 --sizes 64 --batches 1 8 32 --repeats 10 \
  --no-teacher-50 --out "$out/gpu_suite_inference.md" >/dev/null || echo "(inference part ended with status $?)"
cat "$out/gpu_suite_inference.md" | tee -a "$out/gpu_suite.md"
