#!/usr/bin/env bash
# Everything that needs a GPU, in one short run (about 5 minutes on one H200):
#   1. scripts/gpu_check.py          CUDA backends agree, bf16 DCB training + resume, the
#                                    CIFAR recipes' first steps in bf16 (PASS/FAIL lines)
#   2. scripts/benchmark_layers.py   the layer table on CUDA, at the CPU table's shape and at a
#                                    ResNet stage-2 shape (batch 64, 128 channels, 56x56)
#   3. scripts/benchmark_models.py   DCB models against their plain twins, bf16, CIFAR size and
#                                    224x224 (dcb_resnet18_224)
#   4. scripts/benchmark_detection.py  FCOS training throughput, DCB vs plain backbone
#
#   scripts/gpu_benchmarks.sh [OUTPUT_DIR]                  # default: gpu-results/
#   scripts/gpu_benchmarks.sh OUTPUT_DIR --device cpu --tiny # CI: the same command lines, tiny
#
# OUTPUT_DIR receives the logs and a copy of BENCHMARKS.md with the CUDA sections written in;
# copy those sections into BENCHMARKS.md. Arguments after OUTPUT_DIR: `--device cpu` runs
# every command on the CPU, `--tiny` passes --tiny to each (tiny shapes, one round); CI runs
# both so that a renamed flag fails there, not on a GPU. Exit status: that of gpu_check.py
# (0 passed, 1 a check failed, 3 no GPU), or 1 when a benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
shift $(( $# > 0 ? 1 : 0 ))
device=cuda
tiny=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device=$2; shift 2 ;;
        --tiny) tiny=(--tiny); shift ;;
        *) echo "gpu_benchmarks.sh: unknown argument $1 (give OUTPUT_DIR [--device cpu|cuda] [--tiny])" >&2; exit 2 ;;
    esac
done
on=(--device "$device" "${tiny[@]}")
mkdir -p "$out"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled
python=${PYTHON:-python}
cp BENCHMARKS.md "$out/BENCHMARKS.md"

if [ "$device" = cuda ]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 | tee "$out/gpu.txt"
fi
"$python" scripts/gpu_check.py "${on[@]}" 2>&1 | tee "$out/gpu_check.log"
status=$?
[ "$status" -eq 3 ] && exit 3

"$python" scripts/benchmark_layers.py "${on[@]}" --repeats 20 --warmup 3 --shapes 32x64x32 \
    --write "$out/BENCHMARKS.md" 2>&1 | tee "$out/layers_cuda.log" || status=1
"$python" scripts/benchmark_layers.py "${on[@]}" --repeats 20 --warmup 3 \
    --shapes 64x128x56 2>&1 | tee "$out/layers_cuda_stage2.log" || status=1
"$python" scripts/benchmark_models.py "${on[@]}" --precision bf16-mixed --repeats 20 --warmup 3 \
    --write "$out/BENCHMARKS.md" 2>&1 | tee "$out/models_cuda.log" || status=1
"$python" scripts/benchmark_detection.py "${on[@]}" --steps 40 --batch 32 --size 256 \
    --widths 64 128 256 512 --fpn-channels 128 2>&1 | tee "$out/detection_cuda.log" || status=1
exit "$status"
