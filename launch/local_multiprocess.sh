#!/usr/bin/env bash
# Rehearse a pod run on one machine: N processes of the same `python -m sapnet_jax.main`, the
# coordinator on localhost, CPU collectives (gloo), the CPU split into D devices among them.
#
#   launch/local_multiprocess.sh N [--devices D] [--port P] [--logdir DIR] [--dry-run] MAIN_FLAGS...
#   launch/local_multiprocess.sh 2 --devices 4 --config=configs/demo.py --workdir=/tmp/pod_rehearsal
#
# D (default N) must divide by N: each process gets D/N CPU devices. Process 0 prints to the
# terminal; process I>0 writes DIR/process_I.log (DIR defaults to a new temporary folder).
# If a process fails, the others are stopped and the exit status is the failed one's. Every
# other argument goes to sapnet_jax.main. See launch/README.md.
set -euo pipefail

n="${1:-}"
[[ "$n" =~ ^[1-9][0-9]*$ ]] || {
  echo "usage: launch/local_multiprocess.sh N [--devices D] [--port P] [--logdir DIR] [--dry-run] MAIN_FLAGS..." >&2
  exit 2; }
shift
devices="$n" port="" logdir="" dry=0
main_flags=()
while (($#)); do
  case "$1" in
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --logdir) logdir="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    *) main_flags+=("$1"); shift ;;
  esac
done
[[ "$devices" =~ ^[1-9][0-9]*$ ]] && ((devices % n == 0)) || {
  echo "local_multiprocess.sh: --devices $devices must be a positive multiple of N=$n" >&2; exit 2; }
python="${PYTHON:-python3}"
if [[ -z "$port" ]]; then
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ -n "$logdir" ]] || logdir=$(mktemp -d "${TMPDIR:-/tmp}/sapnet_multiprocess.XXXXXX")
mkdir -p "$logdir"

per_process=$((devices / n))
env_vars=(JAX_PLATFORMS=cpu JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo
          "XLA_FLAGS=--xla_force_host_platform_device_count=$per_process ${XLA_FLAGS:-}")
command_for() {
  printf '%q ' env "${env_vars[@]}" "$python" -m sapnet_jax.main --multihost \
    "--coordinator=localhost:$port" "--num_processes=$n" "--process_id=$1" \
    ${main_flags[@]+"${main_flags[@]}"}
}
if ((dry)); then
  for ((i = 0; i < n; i++)); do command_for "$i"; echo; done
  exit 0
fi

pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap 'stop_all; exit 130' INT TERM
echo "local_multiprocess.sh: $n processes x $per_process CPU devices, coordinator localhost:$port; logs of processes 1..$((n - 1)) in $logdir" >&2
for ((i = 0; i < n; i++)); do
  if ((i == 0)); then
    eval "$(command_for 0)" &
  else
    eval "$(command_for "$i")" >"$logdir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for ((k = 0; k < n; k++)); do
  if ! wait -n; then
    status=$?
    echo "local_multiprocess.sh: a process failed (exit $status); stopping the others. Logs: $logdir" >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
