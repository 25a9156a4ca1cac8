#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, on loopback, with token authentication on:
# a head and N worker nodes (each a separate raylet), for tests and trials.
#   cluster/local-cluster.sh start [N_WORKERS] [CPUS_PER_NODE]   -> prints RAY_ADDRESS
#   cluster/local-cluster.sh stop
set -euo pipefail
PORT=${RAY_PORT:-6390}
export RAY_AUTH_MODE=token
# the nodes share this machine with everything else on it: workers at Ray's default niceness (15)
# would get a fraction of a core beside any busy process (README: Benchmarks)
export RAY_worker_niceness=${RAY_worker_niceness:-0}
RAY=${RAY:-$(dirname "$0")/../.venv/bin/ray}
case "${1:-start}" in
  start)
    workers=${2:-2}; cpus=${3:-1}
    # a token is needed by every node and driver that joins (~/.ray/auth_token)
    [ -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ] || "$RAY" get-auth-token --generate >/dev/null
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus="$cpus" --dashboard-agent-listen-port=0 \
        --dashboard-host=127.0.0.1 --disable-usage-stats >/dev/null
    for _ in $(seq "$workers"); do
      "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus="$cpus" >/dev/null
    done
    echo "export RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:$PORT   # Jobs API: http://127.0.0.1:8265"
    ;;
  stop) "$RAY" stop --force >/dev/null ;;
  *) echo "usage: $0 start [N_WORKERS] [CPUS_PER_NODE] | stop" >&2; exit 2 ;;
esac
