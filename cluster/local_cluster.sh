#!/usr/bin/env bash
# A two-node Ray cluster on this machine, with token authentication on: a head node (runs the
# dashboard / job API on 127.0.0.1 only) and a second node joined to it. For trying
# `ray job submit` and multi-node code paths without a cloud account; used by
# tests/integration/test_job_submit.py.
#
#   cluster/local_cluster.sh start    # prints the job address and the env to use
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh stop     # stops only the processes of THIS cluster (not `ray stop`)
#
# Everything lives in $LOCAL_RAY_DIR (default /tmp/convlstm-ray-$USER): each node's Ray temp dir,
# the cluster's own auth token (not ~/.ray/auth_token, so other clusters on the machine are not
# affected), and an `env` file to source before `ray job submit` / `ray status`.
#
# Settings (environment):
#   LOCAL_RAY_DIR              state folder                       (/tmp/convlstm-ray-$USER)
#   LOCAL_RAY_PORT             head GCS port                      (6390)
#   LOCAL_RAY_DASHBOARD_PORT   dashboard / job API, on 127.0.0.1  (8265)
#   LOCAL_RAY_CPUS             CPUs per node                      (1)
#   LOCAL_RAY_MEMORY           memory per node, bytes             (2 GiB)
#   LOCAL_RAY_OBJECT_STORE     object store per node, bytes       (256 MiB)
#   PYTHON                     python whose Ray runs the cluster  (<repo>/.venv/bin/python, else python3)
#                              Job drivers run with this python: use the project's environment.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
STATE="${LOCAL_RAY_DIR:-/tmp/convlstm-ray-${USER:-$(id -un)}}"
PORT="${LOCAL_RAY_PORT:-6390}"
DASH_PORT="${LOCAL_RAY_DASHBOARD_PORT:-8265}"
CPUS="${LOCAL_RAY_CPUS:-1}"
MEM="${LOCAL_RAY_MEMORY:-$((2 * 1024 * 1024 * 1024))}"
OBJ="${LOCAL_RAY_OBJECT_STORE:-$((256 * 1024 * 1024))}"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
RAY="$(dirname "$PYTHON")/ray"
[ -x "$RAY" ] || RAY="$(command -v ray || true)"

die() { echo "local_cluster: $*" >&2; exit 2; }

free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Every process of this cluster: those whose command line names $STATE, plus their descendants
# (Ray workers rename themselves to ray::IDLE etc. but are children of a raylet).
cluster_pids() {
  "$PYTHON" - "$STATE" <<'EOF'
import os, sys
state = sys.argv[1].rstrip("/") + "/"
me = os.getpid()
children, hits = {}, set()
for d in os.listdir("/proc"):
    if not d.isdigit():
        continue
    pid = int(d)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if st[0] == "Z":
        continue
    children.setdefault(int(st[1]), []).append(pid)
    if state in cmd and pid != me and pid != os.getppid():
        hits.add(pid)
todo, seen = list(hits), set(hits)
while todo:
    for c in children.get(todo.pop(), []):
        if c not in seen:
            seen.add(c); todo.append(c)
print(" ".join(str(p) for p in sorted(seen)))
EOF
}

write_env() {
  cat > "$STATE/env" <<EOF
# source this before ray job submit / ray status against the local cluster
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/auth_token
export RAY_ADDRESS=http://127.0.0.1:$DASH_PORT
export RAY_USAGE_STATS_ENABLED=0
EOF
  echo "127.0.0.1:$PORT" > "$STATE/gcs_address"
}

start() {
  [ -x "$RAY" ] || die "no ray executable next to $PYTHON (set PYTHON to the project's venv python)"
  if [ -n "$(cluster_pids)" ]; then die "a cluster from $STATE is already running (cluster/local_cluster.sh stop)"; fi
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  # the cluster's own token: Ray reads RAY_AUTH_TOKEN_PATH; nodes and clients must all see it
  if [ ! -s "$STATE/auth_token" ]; then
    (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token")
  fi
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0
  # the job API would otherwise inherit RAY_ADDRESS from the caller
  unset RAY_ADDRESS
  local head_tmp="$STATE/head" node_tmp="$STATE/node1"
  mkdir -p "$head_tmp" "$node_tmp"

  echo "starting head on 127.0.0.1:$PORT (dashboard/job API http://127.0.0.1:$DASH_PORT, $CPUS CPU)" >&2
  "$RAY" start --head --node-ip-address 127.0.0.1 --port "$PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASH_PORT" \
    --ray-client-server-port "$(free_port)" \
    --node-manager-port "$(free_port)" --object-manager-port "$(free_port)" \
    --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
    --runtime-env-agent-port "$(free_port)" --metrics-export-port "$(free_port)" \
    --num-cpus "$CPUS" --num-gpus 0 --memory "$MEM" --object-store-memory "$OBJ" \
    --temp-dir "$head_tmp" --disable-usage-stats --log-style record >"$STATE/head.log" 2>&1 \
    || { tail -30 "$STATE/head.log" >&2; die "head failed to start (log: $STATE/head.log)"; }

  echo "starting second node ($CPUS CPU)" >&2
  "$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 \
    --node-manager-port "$(free_port)" --object-manager-port "$(free_port)" \
    --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
    --runtime-env-agent-port "$(free_port)" --metrics-export-port "$(free_port)" \
    --num-cpus "$CPUS" --num-gpus 0 --memory "$MEM" --object-store-memory "$OBJ" \
    --temp-dir "$node_tmp" --disable-usage-stats --log-style record >"$STATE/node1.log" 2>&1 \
    || { tail -30 "$STATE/node1.log" >&2; stop >&2 || true; die "second node failed to start (log: $STATE/node1.log)"; }

  write_env
  # wait until both nodes are registered and the job API answers
  local i
  for i in $(seq 1 60); do
    if "$PYTHON" - "$DASH_PORT" "$STATE/auth_token" <<'EOF' 2>/dev/null; then break; fi
import json, sys, urllib.request
port, token = sys.argv[1], open(sys.argv[2]).read().strip()
req = urllib.request.Request(f"http://127.0.0.1:{port}/nodes?view=summary",
                             headers={"Authorization": f"Bearer {token}"})
nodes = json.load(urllib.request.urlopen(req, timeout=2))["data"]["summary"]
alive = [n for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"]
sys.exit(0 if len(alive) >= 2 else 1)
EOF
    sleep 1
  done
  [ "$i" -lt 60 ] || echo "local_cluster: warning: job API did not report 2 live nodes within 60 s" >&2
  cat <<EOF
Ray cluster up: 2 nodes x $CPUS CPU, token authentication on.
  job address (ray job submit --address):  http://127.0.0.1:$DASH_PORT
  GCS address (ray.init / ray status):     127.0.0.1:$PORT
  dashboard (loopback only):               http://127.0.0.1:$DASH_PORT
Use it with:
  source $STATE/env
  ray job submit --working-dir . -- python -c 'import ray; ray.init(); print(ray.cluster_resources())'
Stop it with: cluster/local_cluster.sh stop
EOF
}

stop() {
  local pids
  pids="$(cluster_pids)"
  if [ -z "$pids" ]; then echo "no cluster running from $STATE" >&2; return 0; fi
  echo "stopping $(echo "$pids" | wc -w) processes of the cluster in $STATE" >&2
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  local i
  for i in $(seq 1 20); do
    pids="$(cluster_pids)"
    [ -z "$pids" ] && break
    sleep 0.5
  done
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  pids="$(cluster_pids)"
  [ -z "$pids" ] || die "processes still running: $pids"
  echo "stopped" >&2
}

status() {
  local pids
  pids="$(cluster_pids)"
  if [ -z "$pids" ]; then echo "not running ($STATE)"; return 1; fi
  echo "running: $(echo "$pids" | wc -w) processes; state in $STATE"
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_ADDRESS= \
    "$RAY" status --address "$(cat "$STATE/gcs_address" 2>/dev/null || echo "127.0.0.1:$PORT")"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status   (settings: see the top of this file)" >&2; exit 2 ;;
esac
