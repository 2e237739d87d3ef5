#!/usr/bin/env bash
# Build the offline Python bundle that lets benchmarks/gpu_check.sh run Ray Train on the lent GPU
# machine (no network there, Python 3.12, CUDA torch, pandas, pyarrow, aiohttp, grpcio, protobuf,
# msgpack, ... already installed; at most 64 MiB of files travel per call).
#
#   bash benchmarks/device_bundle.sh          # -> .device_bundle/site-cp312.tar.xz (git-ignored)
#   FORCE=1 bash benchmarks/device_bundle.sh  # rebuild even if nothing changed
#
# What it does: `pip download`s the cp312 manylinux x86_64 wheels pinned in device_bundle.txt (into a cache
# outside the tree, so a second run downloads nothing), installs them with `pip install --target`
# into a staging folder (no dependency resolution: the pins are the whole list), slims Ray (drops
# ray/jars, ray/rllib, ray/serve, ray/llm and their RECORD lines) and packs the staged
# site-packages tree as one tar.xz. On the GPU machine, gpu_check.sh unpacks it into a folder
# and puts that folder on PYTHONPATH, so the machine's own CUDA torch and packages are used.
#
# The list (benchmarks/device_bundle.txt) is Ray's core + data/train/tune needs, pydantic, zarr 3.1
# and what convlstm_dist needs to ingest and `train` with `tracking.enabled: false`, minus what the
# GPU image already has (benchmarks/device_image_packages.txt, from the device tool's KINDS.md).
# `DRY=1 bash benchmarks/gpu_check.sh` checks that list here: it hides every other package of
# .venv from Python (and from Ray's workers) while it ingests and trains. Deliberately left out:
# mlflow (tracking off), s3fs/boto (local archive), pysteps (only `evaluate`'s optical-flow
# baseline), and Ray's [default] extras (aiohttp-cors, opencensus, opentelemetry, ...): without
# them Ray runs its dashboard in minimal mode, which Ray Train does not need; a *partial* set of
# them makes the dashboard crash at start, so it is all or none.
#
# Prints the bundle size and the size of everything else that travels (tracked + untracked,
# not ignored files); the device tool's limit is 64 MiB for all of it together.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUTDIR=${BUNDLE_DIR:-$REPO/.device_bundle}
CACHE=${BUNDLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/convlstm-dist/device-bundle}
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
TARBALL=$OUTDIR/site-cp312.tar.xz

REQ_FILE=benchmarks/device_bundle.txt  # the pins (the whole list; comments allowed)
REQS=$(grep -v '^[[:space:]]*\(#\|$\)' "$REQ_FILE")
SLIM_DIRS="ray/jars ray/rllib ray/serve ray/llm"
PLATFORMS=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for n in 17 24 26 27 28 31 34 35 39; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
        "${PLATFORMS[@]}")

size_mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

report() {
  local bundle tree untracked total
  bundle=$(stat -c %s "$TARBALL")
  tree=$(git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
  total=$((bundle + tree + untracked))
  echo "bundle      $TARBALL: $(size_mib "$bundle") ($(wc -l < "$OUTDIR/MANIFEST.txt") distributions, see MANIFEST.txt)"
  echo "tracked     $(size_mib "$tree")   untracked (not ignored): $(size_mib "$untracked")"
  echo "travels     $(size_mib "$total") of the device tool's 64 MiB (run with carry=[\".device_bundle\"])"
  if [ "$total" -gt $((56 * 1048576)) ]; then
    echo "WARNING: over 56 MiB: little room left under the 64 MiB limit" >&2
    return 1
  fi
}

STAMP=$( { printf '%s\n' "$REQS" "$SLIM_DIRS"; sha256sum "$0" | cut -d' ' -f1; } | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$TARBALL" ] && [ "$(cat "$OUTDIR/stamp" 2>/dev/null)" = "$STAMP" ]; then
  echo "bundle up to date (FORCE=1 rebuilds)"
  report
  exit
fi

mkdir -p "$OUTDIR" "$CACHE/wheels"
printf '%s\n' "$REQS" > "$CACHE/requirements.txt"
t0=$SECONDS
echo "== 1/4 download cp312 wheels into $CACHE/wheels (cached)"
# --no-deps: the pins above are the complete list (everything else is on the GPU image).
"$PY" -m pip download -q --no-deps "${TARGET[@]}" -d "$CACHE/wheels" -r "$CACHE/requirements.txt" \
  2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)  # noise from file:// extra indexes

echo "== 2/4 install them into a staging folder (offline, from the cache)"
STAGE=$CACHE/stage
rm -rf "$STAGE"
"$PY" -m pip install -q --no-deps --no-index --find-links "$CACHE/wheels" --no-compile --target "$STAGE" \
  "${TARGET[@]}" -r "$CACHE/requirements.txt"
rm -rf "$STAGE/bin"  # console scripts carry this machine's interpreter path; gpu_check uses python -m

echo "== 3/4 slim Ray: drop $SLIM_DIRS"
before=$(du -sb "$STAGE/ray" | cut -f1)
for d in $SLIM_DIRS; do rm -rf "${STAGE:?}/$d"; done
"$PY" - "$STAGE" $SLIM_DIRS <<'EOF'
import sys
from pathlib import Path

stage, dropped = Path(sys.argv[1]), tuple(d.rstrip("/") + "/" for d in sys.argv[2:])
for record in stage.glob("ray-*.dist-info/RECORD"):
    lines = record.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if not ln.startswith(dropped)]
    record.write_text("".join(kept))
    print(f"   {record.relative_to(stage)}: {len(lines) - len(kept)} entries of dropped files removed")
EOF
after=$(du -sb "$STAGE/ray" | cut -f1)
echo "   ray/: $(size_mib "$before") -> $(size_mib "$after") unpacked"
(cd "$STAGE" && ls -d ./*.dist-info | sed 's#^\./##; s#\.dist-info$##' | sort) > "$OUTDIR/MANIFEST.txt"
cp "$CACHE/requirements.txt" "$OUTDIR/requirements.txt"

echo "== 4/4 pack $(size_mib "$(du -sb "$STAGE" | cut -f1)") into $TARBALL (xz)"
tmp=$TARBALL.tmp
tar -C "$STAGE" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf - . \
  | xz -T2 "-${XZ_LEVEL:-9}" > "$tmp"
mv "$tmp" "$TARBALL"
echo "$STAMP" > "$OUTDIR/stamp"
echo "built in $((SECONDS - t0)) s"
report
