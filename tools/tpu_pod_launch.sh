#!/usr/bin/env bash
# Launch `solar-jax train` on every worker of a TPU VM pod slice.
#
#   tools/tpu_pod_launch.sh TPU_NAME ZONE CONFIG.yaml [key=value ...]
#
# Each worker runs the same command; jax.distributed.initialize() (distributed.auto=true)
# finds the coordinator from the TPU metadata, and every host reads only its share of each
# global batch. The repository must already be on every worker at the same path with its
# .venv (e.g. `--command "git clone ... && cd solar-jax && make install"` once), and
# run_dir should be a gs:// path so all hosts write one checkpoint.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG.yaml [key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; shift 3
REPO_DIR=${REPO_DIR:-'~/solar-jax'}
OVERRIDES="distributed.auto=true"
for kv in "$@"; do OVERRIDES+=" $(printf '%q' "$kv")"; done
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO_DIR && .venv/bin/solar-jax train $(printf '%q' "$CONFIG") $OVERRIDES progress=false"
