#!/usr/bin/env bash
# Builds .gpuwheels/ (git-ignored): wheels for Python 3.12 on manylinux x86_64 of what maejax
# needs beyond the device machine's image, which has no network. launch/gpu_check.sh installs
# them there with `pip install --no-deps --no-index` (launch/README.md, "One-call GPU check").
#
#   launch/gpu_wheels.sh [DEST]      # default .gpuwheels; needs PyPI; prints the folder's size
#
# The list is derived, not typed: pip's resolver (metadata only, nothing installed) closes
# maejax's dependencies (pyproject.toml) that the image lacks, and the image's packages, over
# their own dependencies; the folder gets the difference.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpuwheels}
LIMIT_MIB=60  # The carried tree is at most 64 MiB, the code included.

# The device image (the device tool's notes): jax 0.11.2 with the CUDA 13 plugin and these.
IMAGE=("jax[cuda13]==0.11.2" flax optax orbax-checkpoint chex etils tensorstore numpy pandas
       pyarrow tifffile scikit-image "torch==2.11.*" transformers timm)
# maejax dependencies left out, none of which the GPU check imports, to fit the carry: jax and
# jaxlib (the image's 0.11.2 is used), imagecodecs (about 40 MB; compressed TIFFs only),
# tensorflow-datasets (maejax.data.tfds_builder only), copairs and cp-measure (the benchmark's
# and probe's reference tools; with duckdb and statsmodels about 40 MB).
SKIP='^(jax|jaxlib|imagecodecs|tensorflow-datasets|copairs|cp-measure)$'

# This host's pip settings (constraints for its own Python, local indexes) do not apply to the
# device's Python 3.12: PyPI only.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT=
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# A current pip: older ones check Requires-Python against this interpreter, not --python-version.
python3 -m venv "$TMP/venv" && "$TMP/venv/bin/pip" install --quiet --upgrade pip
PY="$TMP/venv/bin/python"
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3
        --abi none --platform any --platform manylinux2014_x86_64)
for glibc in $(seq 17 35); do TARGET+=(--platform "manylinux_2_${glibc}_x86_64"); done

# Resolves requirements for the target; writes "name==version" lines (names normalised).
resolve() {
  local out=$1; shift
  "$PY" -m pip install --quiet --dry-run --ignore-installed --target "$TMP/none" "${TARGET[@]}" \
    --report "$TMP/report.json" "$@"
  "$PY" -c '
import json, re, sys
for item in json.load(open(sys.argv[1]))["install"]:
  meta = item["metadata"]
  print(re.sub(r"[-_.]+", "-", meta["name"]).lower() + "==" + meta["version"])
' "$TMP/report.json" > "$out"
}

# maejax's dependencies less the skipped ones and those the image has (the image's versions
# are used; maejax's pins are for jax 0.10).
mapfile -t WANT < <("$PY" -c '
import re, sys, tomllib
name = lambda req: re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()
image = {name(r) for r in sys.argv[2:]}
for req in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
  if not re.match(sys.argv[1], name(req)) and name(req) not in image:
    print(req)
' "$SKIP" "${IMAGE[@]}")
echo "maejax's dependencies beyond the image: ${WANT[*]}"
resolve "$TMP/maejax.txt" "${WANT[@]}"
resolve "$TMP/image.txt" "${IMAGE[@]}"
mapfile -t MISSING < <(grep -v -E "^($(cut -d= -f1 "$TMP/image.txt" | paste -sd'|'))==" \
  "$TMP/maejax.txt" | grep -v -E "${SKIP%)\$}|jax-.*|nvidia-.*)==" | sort)

# setuptools builds maejax there (skipped by gpu_check.sh where the image has 77 or newer).
MISSING+=("setuptools>=77")
echo "missing from the image (${#MISSING[@]}): ${MISSING[*]}"
rm -rf "$DEST" && mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DEST" "${MISSING[@]}"
size=$(du -sm "$DEST" | cut -f1)
echo "$DEST: $(ls "$DEST" | wc -l) wheels, ${size} MiB ($(du -sb "$DEST" | cut -f1) bytes)"
if (( size > LIMIT_MIB )); then
  echo "error: $DEST is ${size} MiB, over ${LIMIT_MIB} MiB: the carried tree must stay" \
    "under 64 MiB; add the largest packages the check does not import to SKIP" >&2
  exit 1
fi
