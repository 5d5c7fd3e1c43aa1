#!/usr/bin/env bash
# The synthetic-rain record recipe (configs/synthetic_rain100h.py): train, then score Rain100H.
#
#   launch/synthetic_record.sh WORKDIR [VARIANT] [main flags...]
#
# VARIANT: gpu (default) or smoke. Trains (resuming if WORKDIR holds checkpoints), then scores
# the final weights on Rain100H's test pairs (RAIN100H: a folder with rainy/ and clean/, default
# ../shared/data/rain100h) in every convention: WORKDIR/rain100h.{json,csv}, the means printed.
# Run from the repository root.
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 WORKDIR [gpu|smoke] [main flags...]" >&2
  exit 2
fi
workdir=$1
variant=${2:-gpu}
shift $(( $# < 2 ? $# : 2 ))
rain100h=${RAIN100H:-../shared/data/rain100h}
for d in "$rain100h/rainy" "$rain100h/clean"; do
  [[ -d $d ]] || { echo "error: $d: no such folder (set RAIN100H to the Rain100H test pairs)" >&2; exit 2; }
done
python -m sapnet_jax.main --config="configs/synthetic_rain100h.py:$variant" --workdir="$workdir" "$@"
python -m sapnet_jax.evaluate --weights "$workdir/checkpoints" --rainy "$rain100h/rainy" \
  --clean "$rain100h/clean" --json "$workdir/rain100h.json" --csv "$workdir/rain100h.csv"
