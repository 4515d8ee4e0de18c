#!/usr/bin/env bash
# Prepare, here (PyPI reachable), what scripts/gpu_check.sh installs on a GPU machine that can
# fetch nothing: onnxruntime-gpu (built for CUDA 13; a ~255 MB wheel) plus the small packages
# the GPU tests and `quasar bench` need beyond that machine's image (torch for CUDA 13 and a
# CPU-only onnxruntime are there already), packed into one tar and split into parts smaller
# than what one device call may carry (64 MiB with the working tree), each with its sha256.
#
#   scripts/gpu_wheel_split.sh [OUT_DIR]        # default: .gpu-wheel (added to .git/info/exclude)
#
# Environment:
#   ORT_GPU_VERSION  onnxruntime-gpu version (default 1.31.1: the CUDA 13 build)
#   PYVER            the GPU machine's Python, X.Y (default 3.12: python3 of the device image,
#                    /work/.library/device/KINDS.md); the wheels are chosen for it
#   PART_MB          part size in MiB (default 56: one part + the ~2 MiB tree per call)
#   NODEPS           wheels taken without their dependencies (default: open_clip_torch ftfy
#                    wcwidth - the image has torch, torchvision, timm, onnx, scipy,
#                    scikit-image, pytest, numpy, pillow, safetensors, huggingface_hub, regex)
#   WITHDEPS         wheels taken with their dependencies (default: none)
#   PYTHON           python whose pip downloads (default: .venv/bin/python, else python3)
#
# Then carry the parts over back-to-back device calls, one part per call (the machine keeps
# ignored files between calls while it stays warm), SHA256SUMS with the first; the last call
# runs scripts/gpu_check.sh. The script prints the calls.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-.gpu-wheel}"
VERSION="${ORT_GPU_VERSION:-1.31.1}"
PART_MB="${PART_MB:-56}"
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
PYVER="${PYVER:-3.12}"
NODEPS="${NODEPS-open_clip_torch ftfy wcwidth}"
WITHDEPS="${WITHDEPS-}"

case "$PART_MB" in ''|*[!0-9]*) echo "PART_MB must be a whole number of MiB, got '$PART_MB'" >&2; exit 2;; esac
if [ "$PART_MB" -ge 62 ] || [ "$PART_MB" -lt 1 ]; then
    echo "PART_MB=$PART_MB: one device call carries at most 64 MiB with the working tree; use 1..61" >&2
    exit 2
fi

rm -rf "$OUT"
mkdir -p "$OUT/wheels" "$OUT/parts"
dl() { "$PY" -m pip download --disable-pip-version-check --only-binary=:all: \
           --python-version "$PYVER" -d "$OUT/wheels" "$@"; }

echo "onnxruntime-gpu==$VERSION for Python $PYVER ..."
if ! dl --no-deps "onnxruntime-gpu==$VERSION"; then
    echo "onnxruntime-gpu $VERSION has no wheel for Python $PYVER on this platform; the CUDA 13" \
         "builds are 1.31.x: set ORT_GPU_VERSION (pip index versions onnxruntime-gpu) or PYVER" >&2
    exit 1
fi
# shellcheck disable=SC2086
[ -z "$NODEPS" ] || dl --no-deps $NODEPS
# shellcheck disable=SC2086
[ -z "$WITHDEPS" ] || dl $WITHDEPS
# what the GPU machine has already (torch, its CUDA libraries, numpy) need not travel
rm -f "$OUT"/wheels/torch-* "$OUT"/wheels/nvidia_* "$OUT"/wheels/triton-*

TAR="gpu-wheels.tar"
tar -cf "$OUT/$TAR" -C "$OUT" wheels
split -b "${PART_MB}M" -d -a 2 "$OUT/$TAR" "$OUT/parts/$TAR.part-"
(
    cd "$OUT"
    sha256sum "$TAR" > SHA256SUMS
    (cd parts && sha256sum "$TAR".part-*) | sed 's#  #  parts/#' >> SHA256SUMS
)
ls "$OUT/wheels" > "$OUT/WHEELS"
echo "$PYVER" > "$OUT/PYVER"
rm -rf "$OUT/wheels" "$OUT/$TAR"

if [ -d .git ] && [ "$OUT" = ".gpu-wheel" ] && ! grep -qx '/.gpu-wheel/' .git/info/exclude 2>/dev/null; then
    echo '/.gpu-wheel/' >> .git/info/exclude
fi
n=$(ls "$OUT/parts" | wc -l)
echo
echo "$n parts of at most $PART_MB MiB in $OUT/parts (sha256 in $OUT/SHA256SUMS; wheels in $OUT/WHEELS):"
ls -l "$OUT/parts"
echo
echo "device calls, back to back (the machine stays warm between them):"
i=0
for p in "$OUT"/parts/*; do
    i=$((i + 1))
    extra=""
    [ "$i" -eq 1 ] && extra=", \"$OUT/SHA256SUMS\", \"$OUT/WHEELS\", \"$OUT/PYVER\""
    if [ "$i" -lt "$n" ]; then
        echo "  run(command='ls -l $OUT/parts', carry=[\"$p\"$extra])"
    else
        echo "  run(command='bash scripts/gpu_check.sh', carry=[\"$p\"$extra], timeout_s=600)"
    fi
done
