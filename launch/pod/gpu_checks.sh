#!/usr/bin/env bash
# The GPU checks of docs/speed.md in one command, for one accelerator host (an H100 / H200):
#   1. the fused-attention tests (tests/model/test_attention.py) against HF's float32 Llama;
#   2. tokens/s and MFU of an 8B-shaped bf16 LoRA step (launch/bench_vs_peft.py --device=gpu),
#      einsum attention vs cuDNN's fused attention, remat 'dots' vs none;
#   3. one whole FLock round against the OpenFedLLM-style torch loop, both on the GPU
#      (launch/bench_round.py --device=gpu), SmolLM2 shapes, bf16.
# Each step has its own time limit and its own log under OUT (default /tmp/gpu_checks), so a
# failure in one still leaves the others' figures. Python packages this host lacks can be
# given as wheels in .whl/ (installed with --no-deps into /tmp/site first).
#   bash launch/pod/gpu_checks.sh [OUT]
set -u
OUT=${1:-${OUT:-/tmp/gpu_checks}}
mkdir -p "$OUT"
cd "$(dirname "$0")/../.."
if ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false
STEPS=${STEPS:-"tests mfu round"}  # and MFU="xla:dots cudnn:none ..." picks the step-2 variants

step() {  # step NAME SECONDS CMD...: runs CMD with a limit, logs to OUT/NAME.log
  local name=$1 limit=$2
  shift 2
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 4 "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, jaxlib, flax, optax, torch, transformers; print('jax', jax.__version__,
    'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__,
    'transformers', transformers.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.log"

for s in $STEPS; do
  case $s in
    tests)
      step tests 80 python3 -m pytest -q -p no:cacheprovider tests/model/test_attention.py
      ;;
    mfu)
      B="python3 launch/bench_vs_peft.py --device=gpu --preset=llama3_8b --clients=1 --steps=2"
      B="$B --batch=4 --seq=2048 --reps=3"
      for v in ${MFU:-xla:dots cudnn:dots cudnn:none}; do  # attention:remat
        step "mfu_${v/:/_}" 110 $B --attention="${v%%:*}" --remat="${v##*:}"
      done
      ;;
    round)
      R="python3 launch/bench_round.py --device=gpu --model=smollm2 --weights=random --rounds=3"
      step round_bf16_cudnn 150 $R --dtype=bfloat16 --attention=cudnn
      ;;
  esac
done
echo "=== JSON lines"
grep -h '^{' "$OUT"/*.log
