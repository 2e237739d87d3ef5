#!/usr/bin/env bash
# One-shot check of the model fast path on a lent GPU (budget: < 7 minutes in all).
#   OUT=/tmp/out bash benchmarks/gpu_check.sh            # on the GPU machine (torch + pytest only)
#   DRY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh      # CPU dry run: tiny config, 1 step
# Every stage is guarded by `timeout`; logs go to $OUT/, a summary table is printed last.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
DRY=${DRY:-0}
if [ "$DRY" = 1 ]; then
  DEV="--device cpu"; CFGS=tiny; STEPS="--steps 1 --warmup 1"; T=1
else
  DEV="--device cuda"; CFGS=mm,radar,large; STEPS="--steps 10 --warmup 3"; T=1
fi
declare -A RC
stage() {  # stage NAME SECONDS CMD...
  local name=$1 secs=$2; shift 2
  echo "=== $name (timeout ${secs}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" >"$OUT/$name.log" 2>&1
  RC[$name]=$?
  echo "--- $name: rc=${RC[$name]} in $((SECONDS - t0)) s"; tail -n 25 "$OUT/$name.log"
}

(nvidia-smi || echo "no nvidia-smi") 2>&1 | tee "$OUT/nvidia-smi.log"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee "$OUT/torch.log"
# --noconftest: tests/conftest.py pulls in the S3/Ray fixtures, absent on the GPU machine.
stage pytest_gpu 110 $PY -m pytest tests/gpu/test_gpu_models.py -q --noconftest -p no:cacheprovider
stage pytest_unit 60 $PY -m pytest tests/unit/test_models_cell.py tests/unit/test_models_encoder_forecaster.py \
  tests/unit/test_models_losses.py tests/unit/test_models_describe.py -q --noconftest -p no:cacheprovider
stage bench_fp32 90 $PY benchmarks/bench_model.py $DEV --configs $CFGS $STEPS --dtype fp32
stage bench_bf16 70 $PY benchmarks/bench_model.py $DEV --configs $CFGS $STEPS --dtype bf16
stage bench_bf16_graph 60 $PY benchmarks/bench_model.py $DEV --configs $CFGS $STEPS --dtype bf16 --impls fast --cuda-graph
stage bench_bf16_compile_graph 110 $PY benchmarks/bench_model.py $DEV --configs $CFGS $STEPS --dtype bf16 --impls fast --compile --cuda-graph

echo; echo "=== summary (stage rc; 124 = timed out)"
for s in pytest_gpu pytest_unit bench_fp32 bench_bf16 bench_bf16_graph bench_bf16_compile_graph; do
  printf '%-26s rc=%s  %s\n' "$s" "${RC[$s]:-?}" "$(grep -E 'passed|failed|error|skipped' "$OUT/$s.log" 2>/dev/null | tail -n 1)"
done
echo; printf '%-19s ' variant; grep -h '^config' "$OUT/bench_fp32.log" 2>/dev/null | head -n 1
for s in bench_fp32 bench_bf16 bench_bf16_graph bench_bf16_compile_graph; do
  grep -hE '^(mm|radar|large|tiny) ' "$OUT/$s.log" 2>/dev/null | awk -v v="${s#bench_}" '{printf "%-19s %s\n", v, $0}'
done
