#!/usr/bin/env bash
# The one-call GPU check (launch/README.md): on the device machine, from the repository root,
#
#   bash launch/gpu_check.sh            # device tool: carry [".gpuwheels"], timeout_s ~540
#
# installs maejax from this tree and the wheels of .gpuwheels/ (launch/gpu_wheels.sh) into a
# folder on PYTHONPATH, offline and without touching the image's packages (jax 0.11.2 with its
# CUDA plugin, flax, ...), then runs `python -m maejax.bench gpu-check --out $OUT`: $OUT gets
# gpu_check.json (rewritten after every part), gpu_check.log, install.log and the ViT-L/16
# step's optimized HLO (train_vitl16.hlo.txt.gz).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
WHEELS=${WHEELS:-.gpuwheels}
SITE=${SITE:-/tmp/maejax-site}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$SITE"

{
  echo "== wheels in $WHEELS"
  # Only what the image lacks: a wheel whose distribution is already installed is left out,
  # so nothing here shadows the image's own packages.
  missing=()
  for whl in "$WHEELS"/*.whl; do
    [[ -e "$whl" ]] || { echo "no wheels in $WHEELS (run launch/gpu_wheels.sh here first)"; break; }
    dist=$(basename "$whl" | cut -d- -f1)
    # setuptools counts only from 77 (pyproject.toml's build requirement: PEP 639 licence).
    if "$PY" -c "import importlib.metadata as m, sys; v = m.version(sys.argv[1]);
sys.exit(sys.argv[1] == 'setuptools' and int(v.split('.')[0]) < 77)" "$dist" 2>/dev/null; then
      echo "image has $dist: $(basename "$whl") skipped"
    else
      missing+=("$whl")
    fi
  done
  if (( ${#missing[@]} )); then
    "$PY" -m pip install --no-deps --no-index --target "$SITE" --upgrade "${missing[@]}"
  fi
  echo "== maejax from $(pwd)"
  # setuptools (the image's, or the wheels' where the image's is older) builds maejax.
  PYTHONPATH="$SITE" "$PY" -m pip install --no-deps --no-index --no-build-isolation \
    --target "$SITE" --upgrade . ||
    echo "maejax did not install: the check runs from the tree (PYTHONPATH)"
} > "$OUT/install.log" 2>&1
# The tree last: an installed maejax comes first; without one, the checkout's (the check
# needs none of the installed package's extras, such as maejax.configs).
export PYTHONPATH="$SITE:$(pwd)"
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
"$PY" -c "import jax, maejax.cli.bench; print('jax', jax.__version__, jax.devices())" \
  >> "$OUT/install.log" 2>&1
echo "install: $(tail -1 "$OUT/install.log") (more in $OUT/install.log)"

"$PY" -m maejax.bench gpu-check --out "$OUT" --budget-s "${BUDGET_S:-450}" --json "$@"
