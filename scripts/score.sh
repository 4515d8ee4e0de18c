#!/usr/bin/env bash
# Set up a runtime venv and score images: bash scripts/score.sh INPUT... [quasar score options]
#
# The venv (.venv-score, or $QUASAR_SCORE_VENV) gets quasar-iqa[cpu] (torch-free); afterwards
# `quasar` is .venv-score/bin/quasar (or `source .venv-score/bin/activate`). pip runs only when
# the venv is new or out of date: a stamp file in the venv holds the hash of pyproject.toml,
# the extras and the Python version (the install is editable, so source edits need no pip).
# QUASAR_EXTRAS=gpu installs onnxruntime-gpu instead of cpu (never both).
#
# Which bundle: --bundle DIR|URL, else $QUASAR_DEFAULT_BUNDLE (a URL a team published with
# `quasar push`: hf://ORG/REPO[@REV], s3://, gs://, https://; the matching client extra is
# added to the venv), else the cached bundle of --model (default clip-rn50-nopos.openai) in
# $QUASAR_HOME (default ~/.cache/quasar). When that is missing, the script first checks with
# one HEAD request (a few seconds) that the weights can be downloaded, then exports the bundle
# once in a separate export venv (.venv-export, or $QUASAR_EXPORT_VENV: torch, ~5.7 GB), so
# the scoring venv stays torch-free; offline, it stops at once with every way to get a bundle.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${QUASAR_SCORE_VENV:-$REPO/.venv-score}"
EXPORT_VENV="${QUASAR_EXPORT_VENV:-$REPO/.venv-export}"
EXTRAS="${QUASAR_EXTRAS:-cpu}"

# --bundle / --model given on the command line (--flag VALUE, --flag=VALUE, -b VALUE)
bundle_arg="" model_arg="" prev=""
for a in "$@"; do
    case "$prev" in --bundle|-b) bundle_arg="$a";; --model|-m) model_arg="$a";; esac
    case "$a" in --bundle=*) bundle_arg="${a#*=}";; --model=*) model_arg="${a#*=}";; esac
    prev="$a"
done
store_extra() {  # the extra that installs the client of a bundle URL
    case "$1" in hf://*) echo hub;; s3://*) echo s3;; gs://*|gcs://*) echo gcs;;
                 http://*|https://*) echo remote;; esac
}
remote="$bundle_arg"
[ -n "$remote" ] || [ -n "$model_arg" ] || remote="${QUASAR_DEFAULT_BUNDLE:-}"
extra="$(store_extra "$remote")"
if [ -n "$extra" ] && [[ ",$EXTRAS," != *",$extra,"* ]]; then EXTRAS="$EXTRAS,$extra"; fi

install() {  # install VENV EXTRAS: (re)install quasar-iqa[EXTRAS] when out of date
    local venv="$1" extras="$2" stamp="$1/.quasar-install-stamp" want log
    [ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
    want="$( { cat "$REPO/pyproject.toml"; echo "extras=$extras"; "$venv/bin/python" -V; } \
            2>&1 | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$venv/bin/quasar" ]; then
        log="$(mktemp)"
        if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check \
                -e "$REPO[$extras]" >"$log" 2>&1; then
            grep -v "is ignored" "$log" >&2; rm -f "$log"; exit 1
        fi
        rm -f "$log"
        echo "$want" > "$stamp"
        rel="${venv#"$PWD"/}"
        echo "scripts/score.sh: installed quasar-iqa[$extras] in $rel; from now on run" \
             "$rel/bin/quasar (or: source $rel/bin/activate)" >&2
    fi
}
install "$VENV" "$EXTRAS"

# No bundle given and no team default: is the cached one there? (exit 0 yes, 3 export it,
# 2 the weights cannot be downloaded: the message is printed, stop before a 5.7 GB install)
if [ -z "$bundle_arg" ] && [[ ",$EXTRAS," != *",export,"* ]] \
        && { [ -n "$model_arg" ] || [ -z "${QUASAR_DEFAULT_BUNDLE:-}" ]; }; then
    rc=0
    model_id="$("$VENV/bin/python" -m quasar.runtime.default_bundle ${model_arg:+"$model_arg"})" \
        || rc=$?
    if [ "$rc" = 3 ]; then
        echo "scripts/score.sh: no cached bundle for $model_id: exporting it once in" \
             "${EXPORT_VENV#"$PWD"/} (torch; downloads the weights)" >&2
        install "$EXPORT_VENV" "cpu,export"
        "$EXPORT_VENV/bin/quasar" export "$model_id" >&2
    elif [ "$rc" != 0 ]; then
        exit 2
    fi
fi
exec "$VENV/bin/quasar" score "$@"
