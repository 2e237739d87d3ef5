#!/usr/bin/env bash
# The paper's two experiments on one GPU in a fixed time budget, without Ray
# (`convlstm-dist train --local`): the six Moving MNIST models of Table 1 and the radar recipe,
# all runs at once on the same GPU, each stopped after BUDGET seconds of training.
#
#   BUDGET=330 OUT=/tmp/out bash pipelines/paper_experiments.sh   # GPU machine (torch, numpy, h5py,
#                                                                 # matplotlib; zarr + pydantic carried)
#   DRY=1 OUT=/tmp/out bash pipelines/paper_experiments.sh        # CPU dry run: tiny models, seconds
#
# Needs only the package's own data (the shipped KNMI sample, the MNIST test digits). Results:
# $OUT/table1.md + table1.png (next to the paper's Table 1), $OUT/runs.tgz (per run: history.csv,
# curves.png, skill.csv/png, forecast.png, summary.json), $OUT/logs.tgz, and
# $OUT/radar-checkpoints.tgz (the radar runs' best models, which `convlstm-dist evaluate` then
# scores on FMI radar against persistence and optical flow).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/paper}
WD=${WD:-/tmp/paper-wd}
BUDGET=${BUDGET:-330}
DRY=${DRY:-0}
PY=${PYTHON:-python3}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT/logs" "$WD"
CLI="$PY -m convlstm_dist.cli"
MM_SET=()
RADAR_SET=(model.height=128 model.width=128 data.batch_size=16 data.crops_per_window=64 data.augment=true
           data.split.block_hours=2.0 data.split.val_every=3 data.split.gap_steps=0
           train.epochs=400 train.schedule=none train.early_stopping_patience=null)
DEV=cuda
MM_RECIPES=(convlstm_dist/recipes/moving_mnist/*.yaml)
if [ "$DRY" = 1 ]; then
  BUDGET=15; DEV=cpu
  MM_RECIPES=(convlstm_dist/recipes/moving_mnist/convlstm-5x5-256.yaml)
  MM_SET=(data.mnist_train=64 data.mnist_val=32 data.mnist_test=32 train.epochs=2 model.hidden=[8])
  RADAR_SET+=(model.hidden=[8,8] model.height=64 model.width=64 data.crops_per_window=2 train.epochs=2)
fi
sets() { for s in "$@"; do printf -- '--set %s ' "$s"; done; }

(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") 2>&1 | tee "$OUT/gpu.txt"
$PY -c "import torch, zarr, pydantic; print('torch', torch.__version__, 'zarr', zarr.__version__, 'pydantic', pydantic.__version__)" \
  2>&1 | tee -a "$OUT/gpu.txt" || exit 1

t0=$SECONDS
echo "=== data: KNMI sample -> $WD/knmi.zarr; Moving MNIST train/val/test archives"
$CLI ingest --reader knmi_hdf5 --archive "$WD/knmi.zarr" --no-parallel --quiet convlstm_dist/sample_data/knmi/*.h5 \
  > "$OUT/logs/ingest.log" 2>&1 || { tail -n 20 "$OUT/logs/ingest.log"; exit 1; }
$PY - "$WD" ${MM_SET[@]+"${MM_SET[@]}"} > "$OUT/logs/mnist-data.log" 2>&1 <<'EOF' || { tail -n 20 "$OUT/logs/mnist-data.log"; exit 1; }
import sys
from convlstm_dist.config import load_config
from convlstm_dist.data.plan import DataPlan
cfg = load_config("convlstm_dist/recipes/moving_mnist/convlstm-5x5-256.yaml", sys.argv[2:])
print(DataPlan.from_config(cfg, sys.argv[1]).counts())
EOF
echo "--- data ready in $((SECONDS - t0)) s: $(cat "$OUT/logs/mnist-data.log")"

echo "=== training, all runs at once, budget ${BUDGET} s each"
pids=()
for r in "${MM_RECIPES[@]}"; do
  n=$(basename "$r" .yaml)
  timeout --kill-after=10 $((BUDGET + 240)) $CLI train --local --device $DEV --time-budget "$BUDGET" --config "$r" \
    --workdir "$WD" $(sets tracking.enabled=false ${MM_SET[@]+"${MM_SET[@]}"}) > "$OUT/logs/$n.log" 2>&1 &
  pids+=($!)
done
for loss in bmse mae; do
  timeout --kill-after=10 $((BUDGET + 240)) $CLI train --local --device $DEV --time-budget "$BUDGET" \
    --config pipelines/radar_nowcast.yaml --workdir "$WD" \
    $(sets tracking.enabled=false data.archive="$WD/knmi.zarr" run.name=radar-$loss train.loss=$loss "${RADAR_SET[@]}") \
    > "$OUT/logs/radar-$loss.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; echo "pid $p rc=$?"; done
echo "--- training done at $((SECONDS - t0)) s"

# Results as a few files (a lent GPU machine returns at most 8 files of 16 MiB): runs.tgz (every
# run's history.csv, curves.png, skill.csv/png, forecast.png, summary.json), logs.tgz, and the radar
# runs' best checkpoints without optimizer state (radar-checkpoints.tgz), plus table1.md/png.
RUNS="$WD/results"; rm -rf "$RUNS"; mkdir -p "$RUNS"
for d in "$WD"/local/*/; do
  n=$(basename "$d"); mkdir -p "$RUNS/runs/$n"
  cp "$d"/{history.csv,curves.png,skill.csv,skill.png,forecast.png,summary.json} "$RUNS/runs/$n/" 2>/dev/null
  case "$n" in radar-*) $PY -c "import sys; from convlstm_dist.checkpoint import slim_checkpoint as s; s(*sys.argv[1:])" \
                          "$d/best" "$RUNS/checkpoints/$n/best" ;; esac
done
tar czf "$OUT/runs.tgz" -C "$RUNS" runs
[ -d "$RUNS/checkpoints" ] && tar czf "$OUT/radar-checkpoints.tgz" -C "$RUNS" checkpoints
$PY -m convlstm_dist.cli table1-report --workdir "$WD" --out "$OUT/table1.md"
for f in "$OUT"/logs/*.log; do echo "== $(basename "$f")"; grep -E "^\[local( epoch|\] (run|train|time|STOP|test|CUDA))|rror" "$f" | tail -n 6; done
tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$OUT/logs"
ls -la "$OUT"
echo "=== total $((SECONDS - t0)) s"
