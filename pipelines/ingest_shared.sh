#!/usr/bin/env bash
# Ingest every shared 5-minute radar event into its own archive under WORKDIR/archives/, the
# archives `pipelines/radar_multi.yaml` trains on:
#
#   bash pipelines/ingest_shared.sh WORKDIR [DATA_DIR]
#
#   WORKDIR/archives/knmi-20100826.zarr   KNMI 5-min accumulations -> mm/h   (reader knmi_hdf5)
#   WORKDIR/archives/fmi-20160928.zarr    FMI reflectivity, dBZ               (reader fmi_pgm)
#   WORKDIR/archives/mch-20150515.zarr    MeteoSwiss AQC 5-min accumulations -> mm/h (pysteps:mch_gif)
#   WORKDIR/archives/mch-20160711.zarr    "
#   WORKDIR/archives/mch-20170131.zarr    "
#
# DATA_DIR defaults to ../shared/data next to the repository. Re-running is safe: frames already in
# an archive are skipped. PYTHON picks the interpreter (default: the repository's .venv, else python3).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORKDIR="${1:?usage: ingest_shared.sh WORKDIR [DATA_DIR]}"
DATA="${2:-$REPO/../shared/data}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
OUT="$WORKDIR/archives"
mkdir -p "$OUT"
ingest() {  # ingest ARCHIVE_NAME READER [--reader-option ...] -- FILES...
  local name="$1" reader="$2"; shift 2
  local opts=()
  while [ "$1" != "--" ]; do opts+=("$1"); shift; done
  shift
  "$PYTHON" -m convlstm_dist.cli ingest --quiet --no-parallel --reader "$reader" "${opts[@]}" \
    --archive "$OUT/$name.zarr" "$@"
}
ingest knmi-20100826 knmi_hdf5 -- "$DATA"/radar/knmi/20100826/RAD_NL25_RAP_5min_*.h5
ingest fmi-20160928 fmi_pgm -- "$DATA"/radar/fmi/20160928/*_fmi.radar.composite.lowest_FIN_SUOMI1.pgm.gz
for event in 20150515 20160711 20170131; do
  ingest "mch-$event" pysteps:mch_gif --reader-option product=AQC --reader-option unit=mm \
    --reader-option accutime=5 -- "$DATA"/radar/mch/$event/AQC*_00005.801.gif
done
