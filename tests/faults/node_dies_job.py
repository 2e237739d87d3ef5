"""Driver of tests/faults/test_node_dies.py, run as its own process (its own three-node Ray cluster,
never the test session's Ray).

    python node_dies_job.py ARCHIVE STORAGE TRACKING_URI RUN_NAME EPOCHS kill|nokill OUT.json

Starts a local three-node Ray cluster (``ray.cluster_utils.Cluster``: the head and two worker nodes
of 1 CPU each), trains the tiny recipe with 2 Ray Train workers of 1 CPU each (so they sit on two
different nodes), and with ``kill`` removes the first non-head node that hosts a training worker
(its raylet and every worker on it are killed, ``allow_graceful=False``) as soon as the run's second
checkpoint is in the storage. Writes what happened to OUT.json.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main() -> int:
    archive, storage, uri, name, epochs, mode, out_path = sys.argv[1:8]
    import ray
    from ray.cluster_utils import Cluster

    from convlstm_dist.config import load_config
    from convlstm_dist.train.driver import run_training

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = [cluster.add_node(num_cpus=1), cluster.add_node(num_cpus=1)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)  # workers' lines ("[train] resumed from ...") reach this stdout
    cfg = load_config(None, [
        f"name={name}", f"data.archive={archive}", f"run.storage_path={storage}", f"tracking.uri={uri}",
        "model.hidden=[8, 8]", "model.height=64", "model.width=64", "model.patch=4",
        "data.in_len=4", "data.out_len=4", "data.batch_size=4", "data.crops_per_window=2",
        "data.split.block_hours=2", "data.split.val_every=2", "data.loader=memory",
        "train.lr=0.005", "train.optimizer=adam", f"train.epochs={epochs}", "train.seed=7",
        "scaling.num_workers=2", "scaling.cpus_per_worker=1", "run.max_failures=2", "run.keep_checkpoints=3",
    ])
    result: dict = {"killed_node": None, "epochs_at_kill": None}

    def train():
        try:
            out = run_training(cfg, f"{out_path}.wd", progress=True)
            result.update(run_id=out.run_id, checkpoint=out.checkpoint, metrics=out.metrics)
        except BaseException as err:  # noqa: BLE001 - reported in OUT.json
            result["error"] = f"{type(err).__name__}: {err}"

    th = threading.Thread(target=train, daemon=True)
    th.start()
    if mode == "kill":
        from ray.util.state import list_actors

        from convlstm_dist.data.storage import ray_storage

        path, fs = ray_storage(storage)
        deadline = time.time() + 900
        while th.is_alive() and time.time() < deadline:
            try:
                infos = fs.get_file_info(pyarrow_selector(f"{path}/{name}"))
                done = sorted(i.base_name for i in infos if i.base_name.startswith("checkpoint_"))
            except Exception:  # noqa: BLE001 - the run folder does not exist yet
                done = []
            if len(done) >= 2:
                workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
                hosts = {w.node_id for w in workers}
                victim = next((n for n in nodes if n.node_id in hosts), None)
                if victim is not None and len(workers) >= 2:
                    result["epochs_at_kill"] = len(done)
                    result["killed_node"] = victim.node_id
                    cluster.remove_node(victim, allow_graceful=False)
                    print(f"[node-dies] removed node {victim.node_id} after {len(done)} checkpoints", flush=True)
                    break
            time.sleep(0.3)
    th.join(timeout=1500)
    result["alive_nodes_at_end"] = sum(1 for n in ray.nodes() if n["Alive"])
    with open(out_path, "w") as fh:
        json.dump(result, fh, default=str)
    ray.shutdown()
    cluster.shutdown()
    return 0


def pyarrow_selector(base: str):
    import pyarrow.fs

    return pyarrow.fs.FileSelector(base, recursive=False, allow_not_found=True)


if __name__ == "__main__":
    sys.exit(main())
