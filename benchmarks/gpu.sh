#!/usr/bin/env bash
# One GPU benchmark run: hasten bench gpu at real sizes in bf16, writing JSON and markdown next to this
# script. Needs a CUDA GPU with about 60 GB free (Qwen-Image's 20B transformer in bf16 is the largest);
# no download. About 8 minutes on one H100. Dry run on a CPU: benchmarks/gpu.sh --device cpu --tiny
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python -c "import hasten" 2>/dev/null || pip install -q -e "$here/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec hasten bench gpu --json "$here/gpu.json" --markdown "$here/gpu.md" "$@"
