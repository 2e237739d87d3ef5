"""Stand-in job for tests/integration/test_job_submit.py until `convlstm-dist train` exists.

Runs as a Ray job driver: connects to the cluster, runs one task per node (SPREAD), and logs
a run with metrics to MLflow from inside a Ray task (MLFLOW_TRACKING_URI comes from the job's
runtime_env, as it will for the real training command).
"""

from __future__ import annotations

import argparse
import os
import socket

import ray


@ray.remote(num_cpus=0.5, scheduling_strategy="SPREAD")
def node_work(i: int) -> tuple[str, float]:
    import numpy as np

    x = np.random.default_rng(i).standard_normal(10_000)
    return ray.get_runtime_context().get_node_id(), float((x ** 2).mean())


@ray.remote(num_cpus=0.5)
def log_to_mlflow(experiment: str, losses: list[float], nodes: int) -> str:
    import mlflow

    assert os.environ.get("MLFLOW_TRACKING_URI"), "MLFLOW_TRACKING_URI not set in the task"
    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="job-submit-standin") as run:
        mlflow.log_param("nodes", nodes)
        mlflow.log_param("host", socket.gethostname())
        for step, v in enumerate(losses):
            mlflow.log_metric("val_loss", v, step=step)
        mlflow.log_metric("nodes_used", nodes)
        return run.info.run_id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", default="job-submit-test")
    args = ap.parse_args()
    ray.init()  # inside a job: attaches to the cluster that runs it
    print("cluster resources:", ray.cluster_resources())
    results = ray.get([node_work.remote(i) for i in range(4)])
    nodes = len({n for n, _ in results})
    losses = sorted((v for _, v in results), reverse=True)
    run_id = ray.get(log_to_mlflow.remote(args.experiment, losses, nodes))
    print(f"logged MLflow run {run_id} from a Ray task; {nodes} node(s) ran work")


if __name__ == "__main__":
    main()
