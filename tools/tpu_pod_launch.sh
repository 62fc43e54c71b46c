#!/usr/bin/env bash
# Install solar-jax on, and launch `solar-jax train` from, every worker of a TPU VM pod slice.
#
#   tools/tpu_pod_launch.sh install TPU_NAME ZONE [REPO_URL]    # once: .[tpu] on every worker
#   tools/tpu_pod_launch.sh TPU_NAME ZONE CONFIG.yaml [key=value ...]
#
# install: on every worker, clones REPO_URL into $REPO_DIR (default ~/solar-jax) unless it is
# there already, then runs `make install ACCEL=tpu` (the TPU build of jax: jax[tpu], libtpu).
# A plain `make install` would give CPU-only JAX and the pod would train on its host CPUs;
# the launch below refuses to start where libtpu is missing.
#
# launch: each worker runs the same command; jax.distributed.initialize() (distributed.auto
# =true) finds the coordinator from the TPU metadata, and every host reads only its share of
# each global batch. run_dir should be a gs:// path so all hosts write one checkpoint.
# Before renting the slice: `solar-jax compile CONFIG.yaml --topology v5p-128` (README).
set -euo pipefail
REPO_DIR=${REPO_DIR:-'~/solar-jax'}
usage() {
  echo "usage: $0 install TPU_NAME ZONE [REPO_URL]" >&2
  echo "       $0 TPU_NAME ZONE CONFIG.yaml [key=value ...]" >&2
  exit 2
}
if [ "${1:-}" = install ]; then
  [ $# -ge 3 ] || usage
  TPU_NAME=$2; ZONE=$3; REPO_URL=${4:-}
  CLONE="test -d $REPO_DIR"
  if [ -n "$REPO_URL" ]; then CLONE="$CLONE || git clone $(printf '%q' "$REPO_URL") $REPO_DIR"; fi
  exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "($CLONE) && cd $REPO_DIR && make install ACCEL=tpu"
fi
[ $# -ge 3 ] || usage
TPU_NAME=$1; ZONE=$2; CONFIG=$3; shift 3
OVERRIDES="distributed.auto=true"
for kv in "$@"; do OVERRIDES+=" $(printf '%q' "$kv")"; done
CHECK=".venv/bin/python -c 'import libtpu' 2>/dev/null || { echo \"error: no TPU build of jax on \$(hostname): run $0 install $TPU_NAME $ZONE\" >&2; exit 2; }"
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
  --command "cd $REPO_DIR && $CHECK && .venv/bin/solar-jax train $(printf '%q' "$CONFIG") $OVERRIDES progress=false"
