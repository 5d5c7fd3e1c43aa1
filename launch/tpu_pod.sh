#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every host, one JAX process per host.
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] [--config configs/tpu_pod.py]
#                     --workdir gs://BUCKET/run [--setup] [--dry-run] [-- --config.train.num_steps=...]
#
# --setup installs the project on every host first (git clone of --repo at --ref, pip install
# with the TPU extra). --dry-run prints the gcloud commands instead of running them. Arguments
# after `--` go to sapnet_jax.main unchanged. See launch/README.md.
set -euo pipefail

tpu="" zone="" project="" config="configs/tpu_pod.py" workdir="" setup=0 dry=0
repo="${SAPNET_REPO:-}" ref="main" dir="sapnet_jax"
extra=()
while (($#)); do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --ref) ref="$2"; shift 2 ;;
    --setup) setup=1; shift ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_pod.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[[ -n "$tpu" && -n "$zone" && -n "$workdir" ]] || {
  echo "tpu_pod.sh: --tpu, --zone and --workdir are required" >&2; exit 2; }
((setup == 0)) || [[ -n "$repo" ]] || {
  echo "tpu_pod.sh: --setup needs --repo URL (or SAPNET_REPO)" >&2; exit 2; }

ssh=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all)
[[ -z "$project" ]] || ssh+=(--project "$project")

run() {
  if ((dry)); then printf '%q ' "$@"; echo; else "$@"; fi
}

if ((setup)); then
  # Fetch the requested ref itself and check out what was fetched (FETCH_HEAD): a plain
  # `git checkout main` after `git fetch` stays on the old local branch.
  run "${ssh[@]}" --command "set -e; [ -d $dir ] || git clone $repo $dir; cd $dir && git fetch -q origin $(printf '%q' "$ref") && git checkout -q --detach FETCH_HEAD && git log -1 --format='%H %s' && python3 -m pip install -q -e '.[tpu]'"
fi
# --multihost: jax.distributed.initialize() finds the coordinator and this host's index from
# the TPU metadata; every host reads its own share of each batch.
main="cd $dir && python3 -m sapnet_jax.main --multihost --config=$config --workdir=$workdir"
for a in ${extra[@]+"${extra[@]}"}; do main+=" $(printf '%q' "$a")"; done
run "${ssh[@]}" --command "$main"
