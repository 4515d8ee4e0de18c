#!/usr/bin/env bash
# The GPU check, in one go, on a CUDA machine that can fetch nothing (the device machine):
#   1. the card's name (nvidia-smi);
#   2. joins the parts made by scripts/gpu_wheel_split.sh, checks every sha256, unpacks the
#      wheels;
#   3. installs the gpu extra (onnxruntime-gpu replaces the CPU onnxruntime) and this tree,
#      and whatever the tests and the bench need that the machine lacks, all from those
#      wheels (--no-index);
#   4. runs the gpu-marked tests (QUASAR_GPU=1);
#   5. runs `quasar bench --variants fp16-onnxruntime --device cuda` (runtime fp32 on CUDA and
#      the gated fp16 variant, IO binding on; the torch column is the CPU reference path);
#   6. writes gpu_table.md (card, versions, the bench table) and the logs into $OUT.
#
#   bash scripts/gpu_check.sh              # on the GPU machine, from the repository root
#   bash scripts/gpu_check.sh --rehearse   # here, on CPU: every step that needs no GPU
#
# --rehearse: the parts are joined and checked and unpacked the same way, the wheels' fit for
# this python is checked with `pip install --dry-run` (nothing installed), the gpu tests are
# only collected, and the bench runs with --device cpu (fp16 is then reported as not built:
# it needs CUDA).
#
# Environment: WHEEL_DIR (.gpu-wheel), PYTHON (python3; --rehearse: .venv/bin/python),
# OUT ($OUT, else gpu-check-out), CASES (rn50-224,vitb32-224), N_IMAGES (64), ROUNDS (3),
# CALIBRATION (64), BENCH_TIMEOUT (seconds, 420), BENCH_ARGS (more `quasar bench` options, e.g.
# "--rn50-bundle DIR").
set -uo pipefail
cd "$(dirname "$0")/.."
REHEARSE=0
[ "${1:-}" = "--rehearse" ] && REHEARSE=1
WHEEL_DIR="${WHEEL_DIR:-.gpu-wheel}"
OUT="${OUT:-gpu-check-out}"
CASES="${CASES:-rn50-224,vitb32-224}"
N_IMAGES="${N_IMAGES:-64}"
ROUNDS="${ROUNDS:-3}"
CALIBRATION="${CALIBRATION:-512}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-420}"
if [ "$REHEARSE" = 1 ]; then
    PY="${PYTHON:-.venv/bin/python}"
    DEVICE=cpu
else
    PY="${PYTHON:-python3}"
    DEVICE=cuda
fi
mkdir -p "$OUT"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
log() { echo "[gpu_check] $*" | tee -a "$OUT/gpu_check.log" >&2; }
die() { log "ERROR: $*"; exit 1; }

# 1. the card
if CARD="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"; then
    log "GPU: $CARD"
elif [ "$REHEARSE" = 1 ]; then
    CARD="none (rehearsal on CPU)"
    log "no nvidia-smi: rehearsal on CPU"
else
    die "nvidia-smi found no GPU: run this on the CUDA machine (or --rehearse here)"
fi

# 2. join the parts, check, unpack
SUMS="$(cd "$WHEEL_DIR" 2>/dev/null && pwd)/SHA256SUMS"
[ -f "$SUMS" ] || die "$SUMS missing: run scripts/gpu_wheel_split.sh here and carry its parts"
missing=""
while read -r sum path; do
    [ -f "$WHEEL_DIR/$path" ] || { [ "${path#parts/}" != "$path" ] && missing="$missing $path"; }
done < "$SUMS"
[ -z "$missing" ] || die "parts not here yet:$missing (carry each in a device call first)"
(cd "$WHEEL_DIR" && grep ' parts/' SHA256SUMS | sha256sum -c --quiet) \
    || die "a part's sha256 does not match $SUMS: carry it again"
TAR_NAME="$(grep -v ' parts/' "$SUMS" | awk '{print $2}')"
cat "$WHEEL_DIR"/parts/"$TAR_NAME".part-* > "$WORK/$TAR_NAME"
(cd "$WORK" && grep -v ' parts/' "$SUMS" | sha256sum -c --quiet) \
    || die "the joined $TAR_NAME does not match its sha256 (parts joined out of order or stale)"
tar -xf "$WORK/$TAR_NAME" -C "$WORK" || die "cannot unpack $TAR_NAME"
rm -f "$WORK/$TAR_NAME"
WHEELS="$WORK/wheels"
ORT_WHEEL="$(ls "$WHEELS"/onnxruntime_gpu-*.whl 2>/dev/null | head -1)"
[ -n "$ORT_WHEEL" ] || die "no onnxruntime_gpu wheel in $TAR_NAME"
log "joined and checked: $(ls "$WHEELS" | wc -l) wheels, $(basename "$ORT_WHEEL")"

# 3. install
PIP=("$PY" -m pip --disable-pip-version-check)
# what the image lacks (KINDS.md): the rest of the tests' and the bench's needs is there
NEED="${NEED:-open_clip_torch ftfy}"
TARGET="$(cat "$WHEEL_DIR/PYVER" 2>/dev/null || echo "?")"
HERE="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
if [ "$REHEARSE" = 1 ]; then
    "${PIP[@]}" install --dry-run --no-deps --no-index --only-binary=:all: \
        --python-version "$TARGET" --target "$WORK/dry" "$WHEELS"/*.whl \
        >> "$OUT/gpu_check.log" 2>&1 || die "the wheels do not install on Python $TARGET"
    log "rehearsal: the $(ls "$WHEELS" | wc -l) wheels would install on Python $TARGET"
else
    [ "$HERE" = "$TARGET" ] || die "the wheels were made for Python $TARGET, $PY is $HERE: run" \
        "scripts/gpu_wheel_split.sh with PYVER=$HERE and carry the parts again"
    "${PIP[@]}" uninstall -y onnxruntime >> "$OUT/gpu_check.log" 2>&1 || true
    "${PIP[@]}" install --no-deps --no-index "$ORT_WHEEL" >> "$OUT/gpu_check.log" 2>&1 \
        || die "pip could not install $(basename "$ORT_WHEEL") (see $OUT/gpu_check.log)"
    # shellcheck disable=SC2086
    "${PIP[@]}" install --no-index --find-links "$WHEELS" $NEED >> "$OUT/gpu_check.log" 2>&1 \
        || log "some helper packages did not install (see the log); going on"
    "${PIP[@]}" install --no-deps --no-build-isolation -e . >> "$OUT/gpu_check.log" 2>&1 \
        || die "pip could not install this tree (see $OUT/gpu_check.log)"
    "$PY" -c "import onnxruntime as o, sys; p = o.get_available_providers(); print(o.__version__, p); sys.exit('CUDAExecutionProvider' not in p)" \
        >> "$OUT/gpu_check.log" 2>&1 || die "onnxruntime has no CUDAExecutionProvider (CUDA 13 / cuDNN libraries?)"
    log "installed: $("$PY" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_device())')"
fi

# 4. the gpu-marked tests
if [ "$REHEARSE" = 1 ]; then
    QUASAR_GPU=1 "$PY" -m pytest -q -m gpu --collect-only -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
else
    QUASAR_GPU=1 timeout 300 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/gpu_tests.txt" 2>&1
fi
TESTS_RC=$?
log "gpu tests (rc $TESTS_RC): $(tail -1 "$OUT/gpu_tests.txt")"

# 5. the bench: runtime fp32 on the device and the gated fp16 variant
BENCH=("$PY" -m quasar bench --variants fp16-onnxruntime --device "$DEVICE" --cases "$CASES"
       --n-images "$N_IMAGES" --rounds "$ROUNDS" --calibration-images "$CALIBRATION"
       --workdir "$WORK/bench" --out "$WORK/bench.md")
# shellcheck disable=SC2206
[ -z "${BENCH_ARGS:-}" ] || BENCH+=(${BENCH_ARGS})
log "${BENCH[*]}"
QUASAR_HOME="$WORK/home" timeout "$BENCH_TIMEOUT" "${BENCH[@]}" > "$OUT/gpu_bench.log" 2>&1
BENCH_RC=$?
log "bench rc $BENCH_RC"

# 6. the table with the card's name
{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "Card: $CARD"
    echo
    echo "Command: QUASAR_HOME=<fresh> ${BENCH[*]}"
    echo
    echo "gpu-marked tests (rc $TESTS_RC): $(tail -1 "$OUT/gpu_tests.txt")"
    echo
    if [ -f "$WORK/bench.md" ]; then cat "$WORK/bench.md"; else echo "bench failed (rc $BENCH_RC): see gpu_bench.log"; tail -20 "$OUT/gpu_bench.log"; fi
} > "$OUT/gpu_table.md"
cat "$OUT/gpu_table.md"
[ "$TESTS_RC" = 0 ] && [ "$BENCH_RC" = 0 ]
