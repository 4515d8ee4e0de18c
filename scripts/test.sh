#!/usr/bin/env bash
# Set up a development venv (runtime + export + evaluate + test extras) and run the
# default test suite (small architectures; heavy and GPU tests are opt-in).
# On this project's build machines pip takes torch 2.14.1 / torchvision 0.29.1 from local
# disk (no download); elsewhere pip fetches them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QUASAR_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check \
    "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "is ignored" || true
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[cpu,export,evaluate,test]" 2>&1 \
    | grep -v "is ignored" || true
"$VENV/bin/python" -c "import quasar.runtime, quasar.export, onnxruntime, torch, open_clip"
# A second, lean venv with only quasar[cpu] (no torch): the everyday install, checked by
# tests/runtime/test_lean_venv.py against the torch model.
LEAN="${QUASAR_LEAN_VENV:-.venv-lean}"
if [ ! -x "$LEAN/bin/python" ]; then
    "$PY" -m venv "$LEAN"
fi
"$LEAN/bin/pip" install -q --disable-pip-version-check -e ".[cpu]" 2>&1 | grep -v "is ignored" || true
export QUASAR_LEAN_PYTHON="$PWD/$LEAN/bin/python"
"$VENV/bin/python" -m pytest -q "$@"
