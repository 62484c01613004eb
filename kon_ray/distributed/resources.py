"""The cluster's nodes and resources, and what a run's workers ask of them.

``check_resources`` rejects a run the cluster cannot place before any worker starts; on a
`ray up` cluster it counts the nodes its autoscaler may still start.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError, RunConfig

# What `ray up` leaves on the head node: cluster.yaml as its autoscaler runs it.
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")


def cluster_nodes(autoscaler_config: Path = AUTOSCALER_CONFIG) -> list[dict[str, float]]:
    """Each node's resources: on a `ray up` cluster the largest one its autoscaler may start,
    so that a run waits for nodes still to come; elsewhere the live nodes."""
    path = autoscaler_config.expanduser()
    if path.is_file():
        import yaml

        return fleet_nodes(yaml.safe_load(path.read_text()))
    import ray

    return [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]


def fleet_nodes(launcher: dict[str, Any]) -> list[dict[str, float]]:
    """Each node's resources in the largest cluster a cluster-launcher config describes: the head
    node and every node type at its ``max_workers``."""
    nodes = []
    for name, kind in launcher["available_node_types"].items():
        count = kind.get("max_workers", 0) + (name == launcher["head_node_type"])
        nodes += [{key: float(value) for key, value in kind.get("resources", {}).items()}] * count
    return nodes


def total_resources(nodes: list[dict[str, float]]) -> dict[str, float]:
    """The cluster's totals of ``nodes``' resources."""
    totals: dict[str, float] = {}
    for node in nodes:
        for key, value in node.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def resolve_cpus(config: RunConfig, nodes: list[dict[str, float]]) -> RunConfig:
    """Fill in ``train.cpus_per_worker`` when None: 1 per GPU worker; for CPU workers, the most
    whole CPUs each with which all of them fit on ``nodes`` (each node's resources) at once."""
    t = config.train
    if t.cpus_per_worker is not None:
        return config
    cpus = 1.0 if t.gpus_per_worker else cpus_per_worker(t.workers, nodes)
    return dataclasses.replace(config, train=dataclasses.replace(t, cpus_per_worker=cpus))


def cpus_per_worker(workers: int, nodes: list[dict[str, float]]) -> float:
    """The most whole CPUs per worker (at least 1) with which ``workers`` workers fit on ``nodes``."""
    cpus = [node.get("CPU", 0.0) for node in nodes]
    each = max(1, int(sum(cpus) // workers))
    while each > 1 and sum(int(c // each) for c in cpus) < workers:
        each -= 1
    return float(each)


def worker_resources(config: RunConfig) -> dict[str, float]:
    """What one Ray Train worker asks of its node; ``train.cpus_per_worker`` must be resolved."""
    t = config.train
    return {"CPU": t.cpus_per_worker or 1.0, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})}


def worker_slots(config: RunConfig, nodes: list[dict[str, float]]) -> int:
    """How many of ``config``'s workers ``nodes`` hold at once, each node filled on its own.

    A GPU worker is placed by its GPUs (a GPU node has CPUs to spare), a CPU worker by its CPUs.
    """
    key = "GPU" if config.train.gpus_per_worker else "CPU"
    need = worker_resources(config)[key]
    return sum(int(node.get(key, 0.0) / need + 1e-9) for node in nodes)


def check_resources(config: RunConfig, resources: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Reject a run the cluster cannot place, before any worker starts.

    ``resources`` are the cluster's totals and ``nodes`` each node's resources: a worker never
    spans nodes, so the workers must fit node by node, not only in total.
    """
    config = resolve_cpus(config, nodes)
    t = config.train
    need_gpus = t.workers * t.gpus_per_worker
    if need_gpus > resources.get("GPU", 0):
        raise ConfigError(
            f"train.workers={t.workers} x train.gpus_per_worker={t.gpus_per_worker:g} needs {need_gpus:g} GPUs; "
            f"the cluster has {resources.get('GPU', 0):g}"
        )
    largest = max((n.get("GPU", 0) for n in nodes), default=0)
    if t.gpus_per_worker > largest:
        raise ConfigError(f"train.gpus_per_worker={t.gpus_per_worker:g}: no node has that many GPUs (largest: {largest:g})")
    need_cpus = t.workers * t.cpus_per_worker
    if need_cpus > resources.get("CPU", 0):
        raise ConfigError(
            f"train.workers={t.workers} x train.cpus_per_worker={t.cpus_per_worker:g} needs {need_cpus:g} CPUs; "
            f"the cluster has {resources.get('CPU', 0):g}"
        )
    slots = worker_slots(config, nodes)
    if slots < t.workers:
        key, field = ("GPU", "gpus_per_worker") if t.gpus_per_worker else ("CPU", "cpus_per_worker")
        per_node = ", ".join(f"{n.get(key, 0):g}" for n in nodes)
        raise ConfigError(
            f"train.workers={t.workers} x train.{field}={getattr(t, field):g}: the nodes hold only {slots} such "
            f"workers at once ({key}s per node: {per_node})"
        )
