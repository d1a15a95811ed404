#!/usr/bin/env bash
# Everything that needs a GPU, in one short run (about 5 minutes on one H200):
#   1. scripts/gpu_check.py        CUDA backends agree, bf16 DCB training + resume (PASS/FAIL lines)
#   2. scripts/benchmark_layers.py the layer table on CUDA, at the CPU table's shape and at a
#                                  ResNet stage-2 shape (batch 64, 128 channels, 56x56)
#   3. scripts/benchmark_detection.py  FCOS training throughput, DCB vs plain backbone, on CUDA
#
#   scripts/gpu_benchmarks.sh [OUTPUT_DIR]     # default: gpu-results/
#
# OUTPUT_DIR receives the logs and a copy of BENCHMARKS.md with the CUDA layer section
# written in; copy that section into BENCHMARKS.md. Exit status: that of gpu_check.py
# (0 passed, 1 a check failed, 3 no GPU), or 1 when a benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
python=${PYTHON:-python}
cp BENCHMARKS.md "$out/BENCHMARKS.md"

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
"$python" scripts/gpu_check.py 2>&1 | tee "$out/gpu_check.log"
status=$?
[ "$status" -eq 3 ] && exit 3

"$python" scripts/benchmark_layers.py --device cuda --repeats 20 --warmup 3 --shapes 32x64x32 \
    --write "$out/BENCHMARKS.md" 2>&1 | tee "$out/layers_cuda.log" || status=1
"$python" scripts/benchmark_layers.py --device cuda --repeats 20 --warmup 3 \
    --shapes 64x128x56 2>&1 | tee "$out/layers_cuda_stage2.log" || status=1
"$python" scripts/benchmark_detection.py --device cuda --steps 40 --batch 32 --size 256 \
    --widths 64 128 256 512 --fpn-channels 128 2>&1 | tee "$out/detection_cuda.log" || status=1
exit "$status"
