#!/usr/bin/env bash
# Held-out-event skill of the multi-event radar recipe, then the final model on every event:
#
#   bash pipelines/radar_skill.sh WORKDIR [DATA_DIR]
#
# 1. ingest the five shared 5-minute events (pipelines/ingest_shared.sh) -> WORKDIR/archives/*.zarr
# 2. `convlstm-dist skill-report`: leave-one-out over the events of RECIPE (or HOLDOUT="ev1 ev2" for one
#    fold): each fold trains on the other events only (FOLD_BUDGET_S seconds, single process) and scores
#    the held-out event on all its windows with the model, persistence, optical flow, S-PROG and ANVIL on
#    the same windows and pixels (one whole-frame motion field per window) -> WORKDIR/skill-report/<recipe>/
#    (CSV, markdown, PNG; pooled from contingency tables and per event) + an MLflow run in WORKDIR/mlflow.db
# 3. `convlstm-dist train --local` on ALL events for FINAL_BUDGET_S seconds, registered as `radar-nowcast`.
#
# Environment (defaults sized for <= 45 minutes on a 2-core CPU: 5 folds x (300 s training + scoring
# of a 128x128 crop) + 600 s final training; 34.4 min measured on 2026-12-05):
#   RECIPE          pipelines/radar_multi.yaml
#   FOLD_BUDGET_S   300      training seconds per fold
#   FINAL_BUDGET_S  600      training seconds of the final model
#   HOLDOUT         ""       explicit held-out events (names, e.g. "mch-20160711"); empty = leave-one-out
#   CROP            128x128  scored crop per window ("full" = the whole grid; slow on CPU)
#   MAX_WINDOWS     ""       evenly spaced subset of windows per scored event (empty = all windows)
#   DEVICE          cpu      device of the fold and final trainings
#   SETS            ""       extra overrides for every training, e.g. "model.hidden=[32,32] train.epochs=5"
#   SKIP_INGEST     0        1: the archives are already there
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORKDIR="${1:?usage: radar_skill.sh WORKDIR [DATA_DIR]}"
DATA="${2:-$REPO/../shared/data}"
RECIPE="${RECIPE:-$REPO/pipelines/radar_multi.yaml}"
FOLD_BUDGET_S="${FOLD_BUDGET_S:-300}"
FINAL_BUDGET_S="${FINAL_BUDGET_S:-600}"
CROP="${CROP:-128x128}"
DEVICE="${DEVICE:-cpu}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
CLI=("$PYTHON" -m convlstm_dist.cli)
set_args=()
for s in ${SETS:-}; do set_args+=(--set "$s"); done

if [ "${SKIP_INGEST:-0}" != 1 ]; then
  echo "[radar_skill] 1/3 ingest the shared events into $WORKDIR/archives"
  bash "$REPO/pipelines/ingest_shared.sh" "$WORKDIR" "$DATA"
fi

echo "[radar_skill] 2/3 held-out-event protocol (${FOLD_BUDGET_S} s training per fold)"
report_args=(--config "$RECIPE" --workdir "$WORKDIR" --time-budget "$FOLD_BUDGET_S" --device "$DEVICE")
[ "$CROP" != full ] && report_args+=(--crop "$CROP")
[ -n "${MAX_WINDOWS:-}" ] && report_args+=(--max-windows "$MAX_WINDOWS")
# shellcheck disable=SC2206
[ -n "${HOLDOUT:-}" ] && report_args+=(--holdout $HOLDOUT)
"${CLI[@]}" skill-report "${report_args[@]}" "${set_args[@]}"

echo "[radar_skill] 3/3 final model on ALL events (${FINAL_BUDGET_S} s), registered as radar-nowcast"
"${CLI[@]}" train --local --device "$DEVICE" --config "$RECIPE" --workdir "$WORKDIR" --quiet \
  --time-budget "$FINAL_BUDGET_S" --set run.name=radar-nowcast-all-events \
  --set tracking.register_model=radar-nowcast "${set_args[@]}"
echo "[radar_skill] done: report in $WORKDIR/skill-report/, model radar-nowcast in $WORKDIR/mlflow.db"
