#!/usr/bin/env bash
# Set up a runtime venv and score images: bash scripts/score.sh INPUT... [quasar score options]
#
# The venv gets quasar[cpu]. With QUASAR_EXTRAS=cpu,export the default bundle
# (clip-rn50-nopos.openai) is exported on first use, which downloads the OpenAI RN50
# weights; QUASAR_EXTRAS=gpu installs onnxruntime-gpu instead (never both). Without a
# bundle in $QUASAR_HOME (default ~/.cache/quasar), pass --bundle DIR.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${QUASAR_SCORE_VENV:-$REPO/.venv-score}"
EXTRAS="${QUASAR_EXTRAS:-cpu}"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
log="$(mktemp)"
if ! "$VENV/bin/pip" install -q --disable-pip-version-check -e "$REPO[$EXTRAS]" >"$log" 2>&1; then
    grep -v "is ignored" "$log" >&2; rm -f "$log"; exit 1
fi
rm -f "$log"
exec "$VENV/bin/quasar" score "$@"
