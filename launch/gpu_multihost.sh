#!/usr/bin/env bash
# Train on several GPU hosts: one JAX process per host, all GPUs of a host in that process.
#
# Under SLURM (one task per node; jax.distributed finds coordinator and ranks itself):
#   srun --nodes=N --ntasks-per-node=1 launch/gpu_multihost.sh --config configs/default.py --workdir DIR
# Without SLURM, run on every host with the same coordinator (host 0's address) and its index:
#   launch/gpu_multihost.sh --coordinator HOST0:1234 --num-processes N --process-id I \
#       --config configs/default.py --workdir /shared/fs/run
# --dry-run prints the command instead of running it. Arguments after `--` go to
# sapnet_jax.main. The workdir must be on a file system every host sees. See launch/README.md.
set -euo pipefail

config="configs/default.py" workdir="" coordinator="" nproc="" pid="" dry=0
extra=()
while (($#)); do
  case "$1" in
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --coordinator) coordinator="$2"; shift 2 ;;
    --num-processes) nproc="$2"; shift 2 ;;
    --process-id) pid="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) echo "gpu_multihost.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
[[ -n "$workdir" ]] || { echo "gpu_multihost.sh: --workdir is required" >&2; exit 2; }
cmd=(python3 -m sapnet_jax.main --multihost "--config=$config" "--workdir=$workdir")
if [[ -n "$coordinator" ]]; then
  [[ -n "$nproc" && -n "$pid" ]] || {
    echo "gpu_multihost.sh: --coordinator needs --num-processes and --process-id" >&2; exit 2; }
  cmd+=("--coordinator=$coordinator" "--num_processes=$nproc" "--process_id=$pid")
elif [[ -z "${SLURM_JOB_ID:-}" ]]; then
  echo "gpu_multihost.sh: not under SLURM: give --coordinator, --num-processes, --process-id" >&2
  exit 2
fi
cmd+=(${extra[@]+"${extra[@]}"})
if ((dry)); then printf '%q ' "${cmd[@]}"; echo; else exec "${cmd[@]}"; fi
