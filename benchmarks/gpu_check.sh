#!/usr/bin/env bash
# One-shot check on a lent GPU machine, in one call of about 8 minutes: the GPU tests, the model
# step benchmark (bench_model.py), and the radar recipe trained through Ray Train on 1 GPU worker
# next to the same recipe in one process (`train --local --device cuda`), from a local archive
# ingested from the shipped KNMI sample, MLflow off.
#
#   bash benchmarks/device_bundle.sh                      # here, first: .device_bundle/ (Ray etc., ~30 MiB)
#   device tool: run(command="OUT=$OUT bash benchmarks/gpu_check.sh", carry=[".device_bundle"], timeout_s=600)
#   DRY=1 OUT=/tmp/gpu_dry bash benchmarks/gpu_check.sh   # CPU dry run of every stage, tiny settings
#
# GPU machine (no network, Python 3.12, CUDA torch): the bundle is unpacked into $SITE, which goes
# on PYTHONPATH ahead of the image's packages (the image's torch is used). Without the bundle the
# Ray stages are skipped. The dry run uses .venv (no bundle) and, unless SIM=0, hides from every
# Python process, Ray's workers included, each package of .venv that neither the GPU image nor the
# bundle provides (benchmarks/device_sim/): a wheel missing from the bundle fails here first.
#
# Knobs: BUDGET seconds for all stages (default 480; a stage never runs past it and does not start
# with less than 20 s left); EPOCHS (3; dry 1); RECIPE (pipelines/radar_nowcast.yaml; dry
# radar_smoke); BENCH=all adds the fp32 and compile+graph benchmarks (slow; measured 2026-11-26).
# Every stage runs under `timeout`. $OUT gets summary.txt and logs.tar.gz (all logs, the runs'
# history/skill files), repacked after each stage so that a killed call still returns them, and
# ray_logs.tar.gz (Ray's session logs) when the Ray Train stage fails.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-/tmp/gpu_check}
DRY=${DRY:-0}
BUDGET=${BUDGET:-480}
WORK=${WORK:-/tmp/convlstm_gpu_check}   # archive, checkpoints, reports: not returned
SITE=${SITE:-/tmp/convlstm_site}        # where the bundle is unpacked (GPU machine)
BUNDLE=$REPO/.device_bundle/site-cp312.tar.xz
LOGS=$WORK/logs
T0=$SECONDS
rm -rf "${WORK:?}"
mkdir -p "$OUT" "$LOGS"
export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0 RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=0.5

if [ "$DRY" = 1 ]; then
  if [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ]; then PY=$REPO/.venv/bin/python; else PY=${PYTHON:-python3}; fi
  DEV=cpu; CFGS=tiny; STEPS="--steps 1 --warmup 1"
  RECIPE=${RECIPE:-pipelines/radar_smoke.yaml}; EPOCHS=${EPOCHS:-1}
  TRAIN_SETS=(--set train.max_steps_per_epoch=2)
  RAY_SETS=(--set scaling.use_gpu=false --set scaling.num_workers=1 --set scaling.cpus_per_worker=0.5)
  export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  SETUP="dry run: $PY, no bundle"
  if [ "${SIM:-1}" = 1 ]; then
    if DEVICE_SIM_BLOCK=$("$PY" benchmarks/device_sim/blocklist.py benchmarks/device_image_packages.txt \
                          benchmarks/device_bundle.txt 2>"$LOGS/device_sim_hidden.log"); then
      export DEVICE_SIM_BLOCK DEVICE_SIM_LOG=$LOGS/device_sim/refused
      mkdir -p "$LOGS/device_sim"
      export PYTHONPATH=$REPO/benchmarks/device_sim:$PYTHONPATH
      SETUP+="; packages the GPU machine lacks are hidden ($(grep -o '([0-9]*)' "$LOGS/device_sim_hidden.log" | tr -d '()') distributions)"
    else
      SETUP+="; SIM failed (see device_sim_hidden.log): nothing hidden"
    fi
  fi
else
  PY=${PYTHON:-python3}
  DEV=cuda; CFGS=mm,radar,large; STEPS="--steps 10 --warmup 3"
  RECIPE=${RECIPE:-pipelines/radar_nowcast.yaml}; EPOCHS=${EPOCHS:-3}
  TRAIN_SETS=()
  RAY_SETS=(--set scaling.use_gpu=true --set scaling.num_workers=1 --set scaling.cpus_per_worker=4)
  if [ -f "$BUNDLE" ]; then
    t=$SECONDS
    rm -rf "${SITE:?}" && mkdir -p "$SITE" && tar -xJf "$BUNDLE" -C "$SITE" \
      && SETUP="bundle $(du -m "$BUNDLE" | cut -f1) MiB unpacked into $SITE in $((SECONDS - t)) s" \
      || SETUP="bundle unpack FAILED"
    export PYTHONPATH=$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}
  else
    SETUP="no bundle at $BUNDLE (run benchmarks/device_bundle.sh here and carry .device_bundle): Ray stages skipped"
    export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
CLI=("$PY" -m convlstm_dist.cli)
ARCHIVE=$WORK/archive.zarr
COMMON=(--config "$RECIPE" --workdir "$WORK" --set "data.archive=$ARCHIVE" --set tracking.enabled=false
        --set "train.epochs=$EPOCHS" "${TRAIN_SETS[@]}")

declare -A RC DUR
ORDER=()
pack() {  # all logs so far -> $OUT/logs.tar.gz (atomically)
  tar -C "$LOGS" -czf "$OUT/logs.tar.gz.part" . 2>/dev/null && mv -f "$OUT/logs.tar.gz.part" "$OUT/logs.tar.gz"
}
skip() {  # skip NAME REASON
  ORDER+=("$1"); RC[$1]="skip"; DUR[$1]=0
  echo "=== $1: skipped ($2)" | tee -a "$LOGS/$1.log"
}
stage() {  # stage NAME SECONDS CMD...: run under timeout, never past the budget
  local name=$1 secs=$2; shift 2
  local left=$((BUDGET - (SECONDS - T0)))
  if [ "$left" -lt 20 ]; then skip "$name" "budget: ${left} s left of ${BUDGET} s"; return; fi
  [ "$secs" -gt "$left" ] && secs=$left
  ORDER+=("$name")
  echo "=== $name (timeout ${secs}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$secs" "$@" >"$LOGS/$name.log" 2>&1
  RC[$name]=$?; DUR[$name]=$((SECONDS - t0))
  echo "--- $name: rc=${RC[$name]} in ${DUR[$name]} s"; tail -n 15 "$LOGS/$name.log"
  pack
}
ok() { [ "${RC[$1]:-x}" = 0 ]; }
# Every process this script starts (Ray's raylet and workers too) inherits this marker; reap ends the
# ones still alive, by the marker, never by name (a dry run shares its machine with other Ray users).
export CONVLSTM_GPU_CHECK_RUN="$$-$RANDOM-$(date +%s)"
reap() {
  local d p sig n=0
  for sig in TERM KILL; do
    for d in /proc/[0-9]*; do
      p=${d#/proc/}
      [ "$p" = "$$" ] && continue
      if grep -qzx "CONVLSTM_GPU_CHECK_RUN=$CONVLSTM_GPU_CHECK_RUN" "$d/environ" 2>/dev/null; then
        kill -s "$sig" "$p" 2>/dev/null && n=$((n + 1))
      fi
    done
    [ "$n" = 0 ] && return
    sleep 3
  done
  echo "reaped $n leftover process(es)"
}

if command -v nvidia-smi >/dev/null; then nvidia-smi -L; nvidia-smi; else echo "no nvidia-smi"; fi >"$LOGS/nvidia-smi.log" 2>&1
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" \
  >"$LOGS/torch.log" 2>&1
echo "$SETUP"; cat "$LOGS/torch.log"

IMPORTS='
import sys, time
t = time.time()
import torch, ray, ray.data, ray.train, ray.train.torch, pydantic, zarr, numcodecs
import convlstm_dist.cli, convlstm_dist.train.driver, convlstm_dist.train.ray_worker, convlstm_dist.train.fit, convlstm_dist.train.local
import convlstm_dist.data.datasource
for m in (torch, ray, pydantic, zarr, numcodecs):
    print(f"{m.__name__:10s} {m.__version__:14s} {m.__file__}")
mlflow = "mlflow" in sys.modules
print(f"imports in {time.time() - t:.1f} s; mlflow imported: {mlflow}")
'
stage import_check 60 "$PY" -c "$IMPORTS"
# --noconftest: tests/conftest.py pulls in the S3/MLflow fixtures, absent on the GPU machine.
stage pytest_gpu 100 "$PY" -m pytest tests/gpu -q --noconftest -p no:cacheprovider
if ok import_check; then
  stage ingest 60 "${CLI[@]}" ingest --reader knmi_hdf5 --archive "$ARCHIVE" --no-parallel --quiet \
    convlstm_dist/sample_data/knmi/RAD_NL25_RAP_5min_*.h5
else
  skip ingest "import_check failed"
fi
if ok ingest; then
  stage train_ray 150 "${CLI[@]}" train "${COMMON[@]}" "${RAY_SETS[@]}"
  if ! ok train_ray; then
    # Ray's own logs (workers included) come back as $OUT/ray_logs.tar.gz: the driver links them into
    # <workdir>/logs/ray; else, on the GPU machine, the latest session is ours
    src=$LOGS/ray; [ -e "$src" ] || { [ "$DRY" != 1 ] && src=/tmp/ray/session_latest/logs; }
    [ -e "$src" ] && timeout 60 tar -C "$src/" --exclude='*.pb' -czf "$OUT/ray_logs.tar.gz" . 2>/dev/null
    [ -f "$OUT/ray_logs.tar.gz" ] && [ "$(stat -c %s "$OUT/ray_logs.tar.gz")" -gt $((15 * 1048576)) ] \
      && rm -f "$OUT/ray_logs.tar.gz"  # over what one returned file may hold
    reap  # a killed run leaves Ray's workers behind (holding the GPU)
  fi
  stage train_local 120 "${CLI[@]}" train --local "${COMMON[@]}" --device "$DEV"
else
  skip train_ray "ingest failed"; skip train_local "ingest failed"
fi
for d in "$WORK"/report-*; do [ -d "$d" ] && mkdir -p "$LOGS/train_ray" && cp "$d"/*.csv "$d"/*.png "$LOGS/train_ray/" 2>/dev/null; done
for d in "$WORK"/local/*/; do [ -d "$d" ] && mkdir -p "$LOGS/train_local" && cp "$d"/*.csv "$d"/*.json "$d"/*.png "$LOGS/train_local/" 2>/dev/null; done
stage pytest_unit 60 "$PY" -m pytest tests/unit/test_models_cell.py tests/unit/test_models_encoder_forecaster.py \
  tests/unit/test_models_losses.py tests/unit/test_models_describe.py -q --noconftest -p no:cacheprovider
BENCHES=(bench_bf16 bench_bf16_graph)
stage bench_bf16 70 "$PY" benchmarks/bench_model.py --device $DEV --configs $CFGS $STEPS --dtype bf16
stage bench_bf16_graph 60 "$PY" benchmarks/bench_model.py --device $DEV --configs $CFGS $STEPS --dtype bf16 --impls fast --cuda-graph
if [ "${BENCH:-}" = all ] || [ "$DRY" = 1 ]; then
  BENCHES+=(bench_fp32 bench_bf16_compile_graph)
  stage bench_fp32 90 "$PY" benchmarks/bench_model.py --device $DEV --configs $CFGS $STEPS --dtype fp32
  stage bench_bf16_compile_graph 110 "$PY" benchmarks/bench_model.py --device $DEV --configs $CFGS $STEPS --dtype bf16 --impls fast --compile --cuda-graph
fi
# DDP + CUDA graph: 2 ranks on the GPU (gloo), flat-bucket graph step vs DDP's eager step: time, agreement
if [ "$DRY" = 1 ]; then DDP_ARGS=(--size 32 --batch 2 --steps 2 --warmup 1); else DDP_ARGS=(--size 128 --batch 4 --steps 20); fi
stage ddp_graph 90 "$PY" benchmarks/bench_ddp_graph.py --device "$DEV" "${DDP_ARGS[@]}"
# Table 1 runner (convlstm-dist table1, experiments/table1_device.py): 2 tiny models through the engine, fp32 evaluation, report
stage table1_dry 60 "${CLI[@]}" table1 --dry-run --device "$DEV" \
  --models 5x5-128-64-64 fc-lstm --time-budget 50 --out "$LOGS/table1_dry"

summary() {
  echo "=== summary ($([ "$DRY" = 1 ] && echo "DRY run, CPU" || echo GPU); $((SECONDS - T0)) s of budget $BUDGET s; stage rc 124 = timed out)"
  echo "$SETUP"
  grep -m1 -E '^GPU 0' "$LOGS/nvidia-smi.log" 2>/dev/null || head -n 1 "$LOGS/nvidia-smi.log"
  tail -n 1 "$LOGS/torch.log"
  for s in "${ORDER[@]}"; do
    printf '%-26s rc=%-4s %4s s  %s\n' "$s" "${RC[$s]}" "${DUR[$s]}" \
      "$(grep -E 'passed|failed|error|skipped|Error|ingested|training finished|wrote .*summary|mlflow imported' "$LOGS/$s.log" 2>/dev/null | tail -n 1 | cut -c1-150)"
  done
  echo; echo "--- train through Ray Train (1 worker) vs train --local, $RECIPE, $EPOCHS epoch(s):"
  grep -ohE '\[epoch [0-9]+/[0-9]+\].*' "$LOGS/train_ray.log" 2>/dev/null | awk '!seen[$0]++' | sed 's/^/ray   /'
  grep -ohE '\[(local )?epoch [0-9]+/[0-9]+\].*' "$LOGS/train_local.log" 2>/dev/null | sed 's/^/local /'
  grep -ohE '(\[engine\]|\[local\]).*(graph|eager|steps on).*|training finished.*' "$LOGS/train_ray.log" "$LOGS/train_local.log" \
    2>/dev/null | awk '!seen[$0]++' | sed 's/^/      /'
  if [ -n "${DEVICE_SIM_LOG:-}" ]; then
    echo; echo "--- hidden modules that something tried to import (dry run; each was handled unless a stage failed):"
    echo "    $(cat "$LOGS"/device_sim/refused.* 2>/dev/null | awk -F. '{print ($1 == "google" ? $1 "." $2 : $1)}' | sort | uniq -c | sort -rn | awk '{printf "%s(%s) ", $2, $1}')"
  fi
  echo; echo "--- DDP (2 ranks, one device) with the CUDA-graph step vs DDP's eager step:"
  grep -hE '^(device=|ddp_step_ms|graph_over_ddp|\[engine\])' "$LOGS/ddp_graph.log" 2>/dev/null | sed 's/^/    /'
  echo; printf '%-19s ' variant; grep -h '^config' "$LOGS/bench_bf16.log" 2>/dev/null | head -n 1
  for s in "${BENCHES[@]}"; do
    grep -hE '^(mm|radar|large|tiny) ' "$LOGS/$s.log" 2>/dev/null | awk -v v="${s#bench_}" '{printf "%-19s %s\n", v, $0}'
  done
}
reap
echo
summary | tee "$LOGS/summary.txt"
cp "$LOGS/summary.txt" "$OUT/summary.txt"
pack
