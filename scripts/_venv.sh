# Sourced by demo.sh and test.sh: make .venv and install the project into it.
# Usage: . scripts/_venv.sh EXTRAS   (e.g. "dev,llama")
set -euo pipefail
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# llama-cpp-python has no wheel on PyPI: pip compiles it (8-20 minutes the first
# time, then pip's wheel cache makes it instant). CPU-only by default; set
# CMAKE_ARGS="-DGGML_CUDA=on" for an NVIDIA GPU build.
export CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)}"
.venv/bin/python -m pip install --quiet --editable ".[$1]"
