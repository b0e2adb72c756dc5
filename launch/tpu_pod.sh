#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: one process per TPU VM host, all started at once.
# JAX finds the coordinator and process ids itself on TPU VMs, so no addresses are needed.
#
#   TPU_NAME=my-v5p-128 ZONE=us-east5-a CONFIG=configs/vitl8.py WORKDIR=gs://bucket/runs/vitl8 \
#     TOPOLOGY=v5p:4x4x4 launch/tpu_pod.sh [--config.field=value ...]
#
# With TOPOLOGY (the slice's GENERATION:SHAPE), worker 0 first compiles the train step ahead of
# time for it (python -m maejax.bench compile; NUM_SLICES for multi-slice) and the job starts
# only if it fits in HBM.
#
# Prerequisite (once): the repository and a venv with `pip install -e '.[tpu]'` on every worker
# at $REPO (e.g. `gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --command "git clone ..."`).
# WORKDIR should be a GCS path (or a disk every host sees): each host writes its own shards.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${CONFIG:?set CONFIG}" "${WORKDIR:?set WORKDIR}"
REPO=${REPO:-~/maejax}
VENV=${VENV:-$REPO/.venv}
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
ARGS=$(printf ' %q' "$@")

if [ -n "${TOPOLOGY:-}" ]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=0 --command "
    cd $REPO && source $VENV/bin/activate &&
    python -m maejax.bench compile --config $CONFIG --topology $TOPOLOGY ${NUM_SLICES:+--num-slices $NUM_SLICES} --no-embed $ARGS" \
    || { echo "compile check failed for $TOPOLOGY: not starting the job" >&2; exit 2; }
fi

gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all --command "
  cd $REPO && source $VENV/bin/activate &&
  python -m maejax.train --config $CONFIG --workdir $WORKDIR --config.distributed.initialize=always --no-progress $ARGS \
    2>&1 | tee -a /tmp/maejax_train.log"
