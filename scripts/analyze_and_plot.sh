#!/usr/bin/env bash
# Analyze every run in a folder, draw its figures, then compare the runs and write one HTML report.
#
#   scripts/analyze_and_plot.sh RUNS_DIR [OUT_DIR]
#
# RUNS_DIR holds one folder per run (checkpoints, and run.json if `specdyn train` wrote it). Each run gets its
# store (RUN/specdyn.zarr; a rerun only analyzes new checkpoints) and OUT_DIR/RUN/KIND.pdf for every kind in
# $KINDS; OUT_DIR (default RUNS_DIR/figures) also gets compare.pdf and report.html over all runs.
# Folders without checkpoints are skipped. A figure that cannot be drawn (e.g. alignment for a model without
# chaining matrices) is reported and skipped; the script exits non-zero if anything failed.
#
# Environment: SPECDYN (the command, default `specdyn`), KINDS (default below), FORMAT (pdf, png or svg).
set -uo pipefail

runs_dir=${1:?usage: $0 RUNS_DIR [OUT_DIR]}
out=${2:-$runs_dir/figures}
read -r -a specdyn <<< "${SPECDYN:-specdyn}"
read -r -a kinds <<< "${KINDS:-rank-heatmap sv stability alignment grokking}"
format=${FORMAT:-pdf}
failed=0
stores=()

for run in "$runs_dir"/*/; do
  run=${run%/}
  name=$(basename "$run")
  [ "$run" -ef "$out" ] && continue
  "${specdyn[@]}" analyze "$run" --quiet
  rc=$?
  if [ $rc -eq 3 ]; then  # exit code 3: no checkpoints in this folder
    echo "skip $run: no checkpoints" >&2
    continue
  elif [ $rc -ne 0 ]; then
    failed=1
    continue
  fi
  stores+=("$run")
  for kind in "${kinds[@]}"; do
    "${specdyn[@]}" plot "$kind" "$run" -o "$out/$name/$kind.$format" || failed=1
  done
done

if [ ${#stores[@]} -eq 0 ]; then
  echo "error: no run with checkpoints under $runs_dir" >&2
  exit 3
fi
"${specdyn[@]}" plot compare "${stores[@]}" --metric effective_rank --metric stability_score -o "$out/compare.$format" || failed=1
"${specdyn[@]}" report "${stores[@]}" -o "$out/report.html" || failed=1
exit $failed
