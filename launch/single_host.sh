#!/usr/bin/env bash
# Train on one machine with one or more GPUs (or on CPU): a single process sees all devices.
#
#   launch/single_host.sh configs/vitb16.py runs/vitb16 [--config.field=value ...]
#   CUDA_VISIBLE_DEVICES=0,1 launch/single_host.sh configs/demo.py runs/demo
set -euo pipefail
CONFIG=${1:?usage: launch/single_host.sh CONFIG WORKDIR [overrides...]}
WORKDIR=${2:?usage: launch/single_host.sh CONFIG WORKDIR [overrides...]}
shift 2
# Relative paths are the caller's: resolve them before changing directory. A config name
# (vitl8, demo:arg) or a gs:// workdir stays as it is.
if [[ -e "${CONFIG%%:*}" && "$CONFIG" != /* ]]; then CONFIG="$PWD/$CONFIG"; fi
if [[ "$WORKDIR" != /* && "$WORKDIR" != *://* ]]; then WORKDIR="$PWD/$WORKDIR"; fi
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
exec python -m maejax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
