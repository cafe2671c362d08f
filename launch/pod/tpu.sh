#!/usr/bin/env bash
# One FLock run on a Cloud TPU pod slice: create (or reuse) the slice, copy this checkout to
# every worker, install it, and run launch/train.py on all workers at once (one process per
# host; process 0 drives the chain). docs/scale_out.md walks through it.
#
#   launch/pod/tpu.sh --tpu=flock-v5p --zone=us-east5-a --type=v5p-64 \
#       --config=configs/pods.py:v5p-64 --workdir=/mnt/shared/flock/run1 \
#       [--project=P] [--version=RUNTIME] [--spot] [--reuse] [--dry_run] [-- TRAIN FLAGS...]
#
# --dry_run prints every command, exactly as it would run, and runs none.
# --reuse   never creates: the slice must exist.
# Flags after `--` go to launch/train.py, e.g. --config.model.weights=hf:/mnt/llama3-70b
# --config.ledger.backend=jsonrpc --config.ledger.rpc_url=http://NODE:8545.
set -euo pipefail

TPU="" ZONE="" TYPE="" CONFIG="" WORKDIR="" PROJECT="" VERSION="" SPOT=0 REUSE=0 DRY=0
REMOTE_DIR="flock_jax"
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu=*) TPU="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --type=*) TYPE="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --reuse) REUSE=1 ;;
    --dry_run) DRY=1 ;;
    --) shift; EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "tpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
for v in TPU ZONE TYPE CONFIG WORKDIR; do
  if [[ -z "${!v}" ]]; then
    echo "tpu.sh: --$(tr '[:upper:]' '[:lower:]' <<<"$v") is required (see --help)" >&2
    exit 2
  fi
done
if [[ -z "$VERSION" ]]; then  # the TPU VM runtime image of the generation
  case "$TYPE" in
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v5litepod-*|v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    *) VERSION="tpu-ubuntu2204-base" ;;
  esac
fi
ACCEL="${TYPE/v5e-/v5litepod-}"  # Cloud TPU calls v5e slices v5litepod-N

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ARCHIVE="/tmp/flock_jax-$TPU.tgz"
G=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

run() {  # prints the command shell-quoted, then runs it (not with --dry_run)
  local a out="+"
  for a in "$@"; do  # exact shell words: plain, or single-quoted
    if [[ "$a" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=" $a"; else out+=" '${a//\'/\'\\\'\'}'"; fi
  done
  echo "$out"
  if [[ $DRY -eq 0 ]]; then "$@"; fi
}

# 1. The slice: reuse it if it exists, else create it.
if [[ $DRY -eq 1 ]]; then
  run "${G[@]}" describe "$TPU" "${WHERE[@]}"
  if [[ $REUSE -eq 0 ]]; then
    echo "# if describe fails:"
    CREATE=("${G[@]}" create "$TPU" "${WHERE[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
    [[ $SPOT -eq 1 ]] && CREATE+=(--spot)
    run "${CREATE[@]}"
  fi
elif ! "${G[@]}" describe "$TPU" "${WHERE[@]}" >/dev/null 2>&1; then
  if [[ $REUSE -eq 1 ]]; then
    echo "tpu.sh: --reuse, but TPU $TPU does not exist in $ZONE" >&2
    exit 1
  fi
  CREATE=("${G[@]}" create "$TPU" "${WHERE[@]}" --accelerator-type="$ACCEL" --version="$VERSION")
  [[ $SPOT -eq 1 ]] && CREATE+=(--spot)
  run "${CREATE[@]}"
fi

# 2. The code: this checkout (tracked and new files, no .git, no runs) to every worker.
run tar -C "$ROOT" --exclude=.git --exclude=runs --exclude='*.egg-info' -czf "$ARCHIVE" .
run "${G[@]}" scp "$ARCHIVE" "$TPU:flock_jax.tgz" "${WHERE[@]}" --worker=all

# 3. Install on every worker: the package and JAX for TPU (libtpu comes with jax[tpu]).
INSTALL="mkdir -p $REMOTE_DIR && tar -xzf flock_jax.tgz -C $REMOTE_DIR && cd $REMOTE_DIR"
INSTALL+=" && python3 -m pip install -q -e . 'jax[tpu]==0.10.2'"
run "${G[@]}" ssh "$TPU" "${WHERE[@]}" --worker=all --command="$INSTALL"

# 4. Train on every worker at once; FLOCK_CLUSTER=tpu: jax.distributed finds the slice's hosts.
TRAIN=(python3 launch/train.py --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}")
CMD="cd $REMOTE_DIR && FLOCK_CLUSTER=tpu$(printf ' %q' "${TRAIN[@]}")"
run "${G[@]}" ssh "$TPU" "${WHERE[@]}" --worker=all --command="$CMD"
