#!/usr/bin/env bash
# Set up a development venv (runtime + export + evaluate + test extras) and a lean venv
# (quasar-iqa[cpu] only, no torch), then run the default test suite (small architectures;
# heavy and GPU tests are opt-in). Extra arguments go to pytest.
# On this project's build machines pip takes torch 2.14.1 / torchvision 0.29.1 from local
# disk (no download); elsewhere pip fetches them.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${QUASAR_VENV:-.venv}"
LEAN="${QUASAR_LEAN_VENV:-.venv-lean}"
PY="${PYTHON:-python3}"

quiet_pip() {  # pip, showing its output only when it fails
    local log
    log="$(mktemp)"
    if ! "$@" --disable-pip-version-check -q >"$log" 2>&1; then
        grep -v "is ignored" "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
[ -x "$LEAN/bin/python" ] || "$PY" -m venv "$LEAN"
# The distribution was renamed quasar -> quasar-iqa (PyPI's quasar is another project): an
# editable install of this tree under the old name is removed first (removing it after the
# new install would take the shared bin/quasar script with it).
for venv in "$VENV" "$LEAN"; do
    if "$venv/bin/python" -m pip show quasar 2>/dev/null | grep -qx "Editable project location: $PWD"; then
        quiet_pip "$venv/bin/python" -m pip uninstall -y quasar
    fi
done
quiet_pip "$VENV/bin/python" -m pip install "torch==2.14.1" "torchvision==0.29.1"
quiet_pip "$VENV/bin/python" -m pip install -e ".[cpu,export,evaluate,report,test,optimize,openvino,ray,serve,ray-serve]"
"$VENV/bin/python" -c "import quasar.runtime, quasar.export, onnxruntime, torch, open_clip, openvino, nncf, ray.data"

# The everyday install: quasar-iqa[cpu] without torch (tests/runtime/test_lean_venv.py).
[ -x "$LEAN/bin/python" ] || "$PY" -m venv "$LEAN"
quiet_pip "$LEAN/bin/python" -m pip install -e ".[cpu]"
"$LEAN/bin/python" -c "import quasar.runtime.scorer, onnxruntime"
export QUASAR_LEAN_PYTHON="$PWD/$LEAN/bin/python"

# `quasar report` is checked in a real headless Chromium (tests/evaluate/test_report.py):
# Debian's chromium package, installed here when missing and apt-get is available.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium; } >/dev/null 2>&1; then
        echo "WARNING: could not install chromium; the browser tests of quasar report will be skipped" >&2
    fi
fi

"$VENV/bin/python" -m pytest -q "$@"
