#!/usr/bin/env bash
# Set up a runtime venv and score images: bash scripts/score.sh INPUT... [quasar score options]
#
# The venv (.venv-score, or $QUASAR_SCORE_VENV) gets quasar[cpu]; afterwards `quasar` is
# .venv-score/bin/quasar (or `source .venv-score/bin/activate`). pip runs only when the venv
# is new or out of date: a stamp file in the venv holds the hash of pyproject.toml, the
# extras and the Python version (the install is editable, so source edits need no pip).
# With QUASAR_EXTRAS=cpu,export the default bundle (clip-rn50-nopos.openai) is exported on
# first use, which downloads the OpenAI RN50 weights; QUASAR_EXTRAS=gpu installs
# onnxruntime-gpu instead (never both). Without a bundle in $QUASAR_HOME (default
# ~/.cache/quasar), pass --bundle DIR.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${QUASAR_SCORE_VENV:-$REPO/.venv-score}"
EXTRAS="${QUASAR_EXTRAS:-cpu}"
STAMP="$VENV/.quasar-install-stamp"
[ -x "$VENV/bin/python" ] || "${PYTHON:-python3}" -m venv "$VENV"
want="$( { cat "$REPO/pyproject.toml"; echo "extras=$EXTRAS"; "$VENV/bin/python" -V; } 2>&1 \
        | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/quasar" ]; then
    log="$(mktemp)"
    if ! "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$REPO[$EXTRAS]" \
            >"$log" 2>&1; then
        grep -v "is ignored" "$log" >&2; rm -f "$log"; exit 1
    fi
    rm -f "$log"
    echo "$want" > "$STAMP"
    rel="${VENV#"$PWD"/}"
    echo "scripts/score.sh: installed quasar[$EXTRAS] in $rel; from now on run $rel/bin/quasar" \
         "(or: source $rel/bin/activate)" >&2
fi
exec "$VENV/bin/quasar" score "$@"
