#!/usr/bin/env bash
# Shared MLflow tracking server: Postgres for runs, S3 for artifacts, artifacts proxied through
# the server (clients need only MLFLOW_TRACKING_URI; S3 credentials live in THIS process's env).
#
# Required environment:
#   MLFLOW_BACKEND_STORE_URI       postgresql://mlflow:PASSWORD@db-host:5432/mlflow
#                                  (from an env file / secret store; it is never put on a command line)
#   MLFLOW_ARTIFACTS_DESTINATION   s3://my-bucket/mlartifacts
# S3 credentials (one of): an IAM role (instance profile / IRSA: nothing to set),
#   AWS_PROFILE, or AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY. Non-AWS S3: MLFLOW_S3_ENDPOINT_URL.
# Optional:
#   MLFLOW_HOST (127.0.0.1)  MLFLOW_PORT (5000)  MLFLOW_WORKERS (2)
#   MLFLOW_ALLOWED_HOSTS     Host headers to accept, e.g. "mlflow.mlflow.svc.cluster.local:5000,mlflow.example.org"
#   MLFLOW_APP_NAME          basic-auth  to turn on MLflow's username/password auth
#
# Listen on 127.0.0.1 (default) behind an authenticating reverse proxy, or on the pod IP inside
# a cluster network; never on a public address without auth.
set -euo pipefail

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql://user:pass@host:5432/db)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (s3://bucket/prefix)}"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"
WORKERS="${MLFLOW_WORKERS:-2}"

# MLflow's background job runner is not needed for tracking and costs ~2 GiB and ~10 s at start.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# --backend-store-uri / --artifacts-destination are read from MLFLOW_BACKEND_STORE_URI /
# MLFLOW_ARTIFACTS_DESTINATION by mlflow itself: the database password never appears in `ps`.
export MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS_DESTINATION
args=(server --host "$HOST" --port "$PORT" --workers "$WORKERS" --serve-artifacts)
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then args+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS"); fi
if [ -n "${MLFLOW_APP_NAME:-}" ]; then args+=(--app-name "$MLFLOW_APP_NAME"); fi

# Postgres needs a driver in this environment: pip install psycopg2-binary (and boto3 for S3).
exec mlflow "${args[@]}"
