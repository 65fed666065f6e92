#!/usr/bin/env bash
# GPU checks of the rollout engines, for a machine with a GPU and vLLM installed (not part of CI):
# the `vllm` engine's distribution, weight sync and seeds, and vllm / loop / hf throughput.
#   bash bench/gpu_check.sh [MODEL_DIR]
# MODEL_DIR defaults to the test world's base model under .rlhfkit-cache/ (built offline by the
# test suite); nothing is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import vllm" 2>/dev/null || { echo "vLLM is not installed here: pip install 'rlhfkit[vllm]'"; exit 2; }
ARGS=(--device cuda --dtype bfloat16 --prompts 256 --samples 8)
if [ $# -ge 1 ]; then ARGS+=(--model-dir "$1"); fi
python bench/vllm_check.py "${ARGS[@]}"
