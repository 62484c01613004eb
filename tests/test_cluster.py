"""The cluster path on one machine: trials placed against each node's resources, and small studies
on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``, every node on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from kon_ray.config import ConfigError, RunConfig
from kon_ray.distributed import LOOPBACK_ENV, check_resources, cpus_per_worker, total_resources
from kon_ray.studies import Study
from kon_ray.studies.tune import SLOT, plan_resources
from tests.conftest import tiny_config
from tests.test_studies import tiny_base

os.environ.update(LOOPBACK_ENV)  # before Ray is first imported

# Heterogeneous GPU nodes: 12 GPUs in all, but never more than 8 on one node.
EIGHT, FOUR = {"CPU": 96.0, "GPU": 8.0}, {"CPU": 48.0, "GPU": 4.0}
MIXED = [EIGHT, FOUR]


def gpu_config(kg: Path, workers: int, gpus: int) -> RunConfig:
    return tiny_config(kg, f"train.workers={workers}", f"train.gpus_per_worker={gpus}")


@pytest.mark.parametrize(
    ("workers", "gpus", "message"),
    [
        (1, 8, None),
        (3, 4, None),  # two on the 8-GPU node, one on the 4-GPU node
        (12, 1, None),
        (2, 6, r"train\.workers=2 x train\.gpus_per_worker=6: the nodes hold only 1 such workers at once \(GPUs per node: 8, 4\)"),
        (4, 3, r"the nodes hold only 3 such workers"),  # 12 GPUs in all, but 3 GPUs fit twice on 8 and once on 4
        (1, 10, r"train\.gpus_per_worker=10: no node has that many GPUs \(largest: 8\)"),
        (13, 1, r"train\.workers=13 x train\.gpus_per_worker=1 needs 13 GPUs; the cluster has 12"),
    ],
)
def test_a_trial_is_checked_node_by_node(tiny_kg: Path, workers: int, gpus: int, message: str | None) -> None:
    config = gpu_config(tiny_kg, workers, gpus)
    if message is None:
        check_resources(config, total_resources(MIXED), MIXED)
    else:
        with pytest.raises(ConfigError, match=message):
            check_resources(config, total_resources(MIXED), MIXED)


@pytest.mark.parametrize(("workers", "gpus", "concurrent"), [(1, 3, 3), (1, 4, 3), (2, 2, 3), (4, 2, 1), (1, 8, 1), (8, 1, 1)])
def test_concurrent_trials_follow_what_each_node_holds(tiny_kg: Path, workers: int, gpus: int, concurrent: int) -> None:
    """On an 8-GPU and a 4-GPU node, e.g. 1 x 3 GPUs runs 3 at once, not the 4 that 12 GPUs suggest."""
    study = Study(name="x", grid={"model.k": [2, 3, 4]}, seeds=(0, 1), max_concurrent_trials=8)
    resources = {**total_resources(MIXED), SLOT: 8.0}
    assert plan_resources(study, [gpu_config(tiny_kg, workers, gpus)], resources, MIXED) == (concurrent, None, {SLOT: 1.0})


def test_cpu_workers_get_cpus_that_fit_on_one_node() -> None:
    assert cpus_per_worker(1, [{"CPU": 1.0}] * 3) == 1.0  # three 1-CPU nodes: not 3 CPUs for one worker
    assert cpus_per_worker(2, [{"CPU": 4.0}, {"CPU": 2.0}]) == 2.0
    assert cpus_per_worker(2, [{"CPU": 8.0}]) == 4.0
    assert cpus_per_worker(3, [{"CPU": 0.0}, {"CPU": 1.0}]) == 1.0  # too few: the check says so, naming the fields


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head node for the trial drivers only (CPU 0, as in cluster.yaml) and three 1-CPU worker nodes."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # a local Ray left by another test
    head = {"node_ip_address": "127.0.0.1", "num_cpus": 0, "resources": {SLOT: 4}, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    for _ in range(3):
        cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def trial_nodes(folder: Path) -> dict[str, set[str]]:
    """The Ray nodes each trial's workers ran on, as its final report recorded them."""
    from ray.tune import ExperimentAnalysis

    return {t.trial_id: set(t.last_result["nodes"].split(",")) for t in ExperimentAnalysis(str(folder)).trials}


@pytest.mark.slow
def test_a_study_spreads_its_trials_over_the_nodes(cluster: Any, tiny_kg: Path, tmp_path: Path) -> None:
    """3 trials of one 1-CPU worker each, at once on three 1-CPU nodes; every node writes to one storage folder."""
    from kon_ray.studies.tune import run_study

    study = Study(name="spread", base=tiny_base(tiny_kg), grid={"model.k": [2, 3, 4]}, max_concurrent_trials=3)
    table = run_study(study, "spread.py", storage=tmp_path, address=cluster.address)
    assert len(table) == 3 and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all() and table["test.mrr"].notna().all()
    nodes = trial_nodes(tmp_path / "spread")
    used = set().union(*nodes.values())
    assert nodes.keys() == set(table["trial_id"])
    assert used <= {n.node_id for n in cluster.worker_nodes} and len(used) > 1  # never on the head


def remove_the_stalled_node(cluster: Any, stalled: Path) -> None:
    """Once a trial's process stalls mid-training, remove the worker node it runs on."""
    import psutil

    deadline = time.time() + 300
    while not (stalled.is_file() and stalled.read_text()):
        assert time.time() < deadline, "no trial reached its stall"
        time.sleep(0.2)
    ancestors = {p.pid for p in psutil.Process(int(stalled.read_text())).parents()}
    (node,) = (n for n in cluster.worker_nodes if n.all_processes["raylet"][0].process.pid in ancestors)
    cluster.remove_node(node)


@pytest.mark.slow
@pytest.mark.parametrize(
    "workers",
    [
        pytest.param({}, id="inline"),  # one worker: the trial trains in its Tune process
        pytest.param({"train.workers": 2, "train.cpus_per_worker": 0.5}, id="ray-train"),
    ],
)
def test_a_study_completes_after_losing_a_node(
    cluster: Any, tiny_kg: Path, tmp_path: Path, stall_after: Any, workers: dict[str, Any]
) -> None:
    """2 trials at once on three 1-CPU nodes; the node of one is removed while that trial trains
    (stalled after its checkpoint at step 4). That trial is retried (the study's max_retries) from
    its latest checkpoint, and both finish."""
    from kon_ray.studies.tune import run_study

    study = Study(name="lost", base=tiny_base(tiny_kg), grid={"model.k": [2, 4]}, max_concurrent_trials=2, max_retries=1)
    stalled = stall_after(4, 600)
    with ThreadPoolExecutor(1) as pool:
        removed = pool.submit(remove_the_stalled_node, cluster, stalled)
        table = run_study(study, "lost.py", {"train.max_steps": 8, **workers}, storage=tmp_path, address=cluster.address)
        removed.result()
    assert len(table) == 2 and (table["status"] == "TERMINATED").all() and table["test.mrr"].notna().all()
    assert sorted(table["failures"]) == [0, 1]  # the trial on the lost node, retried once
    lost = table.loc[table["failures"] == 1, "trial_id"].item()
    (results,) = (tmp_path / "lost").glob(f"*{lost}*/result.json")
    steps = [r["step"] for r in map(json.loads, results.read_text().splitlines()) if "final" not in r]
    assert 4 in steps and steps == sorted(set(steps)) and steps[-1] == 8  # the retry went on from step 4's checkpoint
