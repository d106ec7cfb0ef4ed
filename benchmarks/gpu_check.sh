#!/usr/bin/env bash
# The GPU check in one go, for a lent GPU machine (its own Python with PyTorch + CUDA, numpy, Pillow, safetensors,
# tqdm, scikit-learn and pytest; nothing downloadable): install the project without dependencies, run the fast test
# lane on the GPU, train each preset a few hundred steps (bf16, channels-last, once with --compile) for images/s and
# FLOP utilisation, measure training memory, sample 10,000 images and score them (FeatureNet FD), check that a GPU
# run resumes bit-exactly and samples on the CPU, and train under torchrun with one process (nccl). Every stage and
# its limits are in benchmarks/gpu_check.py; after the install, the stages stay inside --budget (450 s by default).
#
#   benchmarks/gpu_check.sh [--out DIR] [--dry-run] [--budget SECONDS] [--work DIR]
#
# Writes DIR/gpu_check.json and DIR/gpu_check.log (DIR: --out, else $OUT where the device tool provides it, else
# ./gpu_check). --dry-run runs every stage on the CPU at tiny sizes and installs nothing (tests/test_gpu_check.py
# does, marked slow).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check}"
args=("$@")
dry_run=0
for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ "${args[i]}" == "--out" && $((i + 1)) -lt ${#args[@]} ]]; then out="${args[i + 1]}"; fi
    if [[ "${args[i]}" == "--dry-run" ]]; then dry_run=1; fi
done
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"
python="${PYTHON:-$(command -v python || command -v python3)}"
pip_status=""
if [[ $dry_run == 0 ]]; then
    # The project itself, without its dependencies (nothing can be downloaded there): gpu_check.py imports ddpm.
    "$python" -m pip install --no-deps --no-build-isolation --no-index -e . 2>&1 | tee -a "$log"
    pip_status="${PIPESTATUS[0]}"
fi
# src first on the module path as well, so that the working tree's code runs even where the install failed.
GPU_CHECK_PIP_STATUS="$pip_status" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee -a "$log"
exit "${PIPESTATUS[0]}"
