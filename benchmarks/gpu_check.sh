#!/usr/bin/env bash
# One prepared GPU check for the device machine (about 7-9 minutes on an H100), e.g. with the device tool:
#   bash benchmarks/gpu_check.sh            (results under $OUT, or ./gpu_results when $OUT is unset)
# Installs nothing beyond the package itself; the machine must have torch with CUDA, open_clip_torch and captum.
# Most important first, so that a run cut short still answers the goals: CUDA tests (maps equal the CPU's,
# at most three host-device syncs per call), peak memory, the bf16 speed table, autocast closeness, the fp32 table.
set -uo pipefail
out="${OUT:-gpu_results}"; mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python -m pytest -q tests/test_cuda.py tests/test_device_syncs.py 2>&1 | tee "$out/test_cuda.log"
python benchmarks/memory.py --device cuda --batch-size 64 --dtypes bf16,fp32 --out "$out/memory_cuda.json" \
    2>&1 | tee "$out/memory_cuda.md"
python benchmarks/speed.py --device cuda --dtype bf16 --ig-repeats 1 --ig-max-maps 16 \
    --out "$out/h100_bf16.json" --out "$out/h100_bf16.md" 2>&1 | tail -40
python benchmarks/autocast_check.py --device cuda --dtypes bf16,fp16 --out "$out/autocast_cuda.json" 2>&1 | tail -20
python benchmarks/speed.py --device cuda --dtype fp32 --ig-repeats 1 --ig-max-maps 8 --captions 100 \
    --out "$out/h100_fp32.json" --out "$out/h100_fp32.md" 2>&1 | tail -40
