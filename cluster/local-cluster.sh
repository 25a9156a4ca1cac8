#!/usr/bin/env bash
# A multi-node Ray cluster on one machine, on loopback, with token authentication on:
# a head and N worker nodes (each a separate raylet), for tests and trials.
#   cluster/local-cluster.sh start [N_WORKERS] [CPUS_PER_NODE]   -> prints RAY_ADDRESS
#   cluster/local-cluster.sh stop        (this cluster's processes only, not another Ray on the machine)
set -euo pipefail
PORT=${RAY_PORT:-6390}
# its own Ray folder: a Jobs API driver joins the address in its node's ray_current_cluster file,
# which any later `ray start` on this machine overwrites in the shared /tmp/ray
TMPD=${RAY_TEMP_DIR:-/tmp/deepscope-ray-$PORT}
export RAY_AUTH_MODE=token
# the nodes share this machine with everything else on it: workers at Ray's default niceness (15)
# would get a fraction of a core beside any busy process (README: Benchmarks)
export RAY_worker_niceness=${RAY_worker_niceness:-0}
RAY=${RAY:-$(dirname "$0")/../.venv/bin/ray}
case "${1:-start}" in
  start)
    workers=${2:-2}; cpus=${3:-1}
    export DEEPSCOPE_LOCAL_CLUSTER=$TMPD  # every process of this cluster inherits it: `stop` finds them by it
    # a token is needed by every node and driver that joins (~/.ray/auth_token)
    [ -f "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ] || "$RAY" get-auth-token --generate >/dev/null
    "$RAY" start --head --node-ip-address=127.0.0.1 --port="$PORT" --num-cpus="$cpus" --dashboard-agent-listen-port=0 \
        --dashboard-host=127.0.0.1 --disable-usage-stats --temp-dir="$TMPD" >/dev/null
    for _ in $(seq "$workers"); do
      "$RAY" start --address="127.0.0.1:$PORT" --node-ip-address=127.0.0.1 --num-cpus="$cpus" --temp-dir="$TMPD" >/dev/null
    done
    echo "export RAY_AUTH_MODE=token RAY_ADDRESS=127.0.0.1:$PORT   # Jobs API: http://127.0.0.1:8265"
    ;;
  stop)  # the processes that carry this cluster's mark, and theirs (a retitled agent's environ can lose it)
    "$(dirname "$RAY")/python" - "$TMPD" <<'EOF'
import sys, time
import psutil
mark = f"DEEPSCOPE_LOCAL_CLUSTER={sys.argv[1]}".encode()
def marked(p):
    try:
        with open(f"/proc/{p.pid}/environ", "rb") as f:
            return mark in f.read()
    except OSError:
        return False
for _ in range(10):  # again until none is left: a raylet killed last restarts agents killed first
    procs = []
    for p in filter(marked, psutil.process_iter()):
        try:
            procs += [p, *p.children(recursive=True)]
        except psutil.Error:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    if not procs:
        break
    time.sleep(1)
EOF
    rm -rf "$TMPD" ;;
  *) echo "usage: $0 start [N_WORKERS] [CPUS_PER_NODE] | stop" >&2; exit 2 ;;
esac
