"""K-ON training on Ray Train workers, each running DeepSpeed: a laptop or an A100 cluster.

``launch`` validates the run against the cluster before any worker starts, then runs
``worker`` on ``train.workers`` Ray Train workers (gloo and fp32 on CPU, nccl and bf16 on
CUDA). Each evaluation reports metrics and a checkpoint; a failed worker group restarts
from the latest checkpoint, and so does a re-launch under the same name and storage.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kon_ray import checkpoint, console
from kon_ray.checkpoint import MODEL_DIR, LoopState, RunIdentity
from kon_ray.config import ConfigError, RunConfig
from kon_ray.results import now

log = logging.getLogger(__name__)

RESULT_FILES = ("metrics.json", "ranks.parquet")
# A local Ray and its workers' gloo groups on loopback only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo"}
# Every worker process of a Ray on this machine's loopback runs ``setup_local_worker`` first.
LOCAL_SETUP_HOOK = "kon_ray.distributed.setup_local_worker"
# What `ray up` leaves on the head node: cluster.yaml as its autoscaler runs it.
AUTOSCALER_CONFIG = Path("~/ray_bootstrap_config.yaml")


def start_ray(address: str | None, **local: Any) -> None:
    """Join ``address`` (e.g. 'auto' on a cluster) or start a new local Ray bound to 127.0.0.1, never
    one already running here; ``local`` are further ``ray.init`` arguments for it (``num_cpus``).

    Ray reads the loopback switch when it is first imported, so this runs before any import of ray.
    """
    if address is None:
        os.environ.update(LOOPBACK_ENV)
    import ray

    if ray.is_initialized():
        return
    console.capture_ray_logging()
    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", runtime_env=local_runtime_env(), **local)
    elif address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):  # e.g. a ray.cluster_utils.Cluster
        ray.init(address=address, runtime_env=local_runtime_env())
    else:
        ray.init(address=address)
    console.capture_ray_output()


def local_runtime_env() -> dict[str, Any]:
    """The runtime environment of a Ray on this machine: the worker set-up hook, and a test's
    fault plan (``kon_ray.faults``) when one is named."""
    from kon_ray.faults import FAULTS_ENV

    env = {"worker_process_setup_hook": LOCAL_SETUP_HOOK}
    if FAULTS_ENV in os.environ:
        return {**env, "env_vars": {FAULTS_ENV: os.environ[FAULTS_ENV]}}
    return env


def setup_local_worker() -> None:
    """Run in each worker process of a Ray on this machine's loopback."""
    quiet_without_state_api()
    store_on_master_addr()


def quiet_without_state_api() -> None:
    """Without ``ray[default]`` there is no State API, and Ray Train's placement-group cleaner
    would warn once a second that it cannot reach it."""
    if importlib.util.find_spec("aiohttp") is None:  # ray[default]'s dashboard needs it
        name = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        logging.getLogger(name).addFilter(lambda record: "Failed to query" not in record.getMessage())


def store_on_master_addr() -> None:
    """Rank 0's torch rendezvous store listens on MASTER_ADDR (127.0.0.1 here) only.

    torch's TCPStore server listens on every interface whatever address its clients are
    given, so a local Ray Train run would open a port on the network.
    """
    import socket

    from torch.distributed import TCPStore

    # The module: ``torch.distributed.rendezvous`` as an attribute is a function of that name.
    rendezvous = importlib.import_module("torch.distributed.rendezvous")
    create = rendezvous._create_c10d_store

    def create_store(hostname: str, port: int, rank: int, world_size: int, timeout: Any, use_libuv: bool = True) -> Any:
        if rank != 0 or rendezvous._torchelastic_use_agent_store():
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        server = socket.create_server((hostname, port))
        return TCPStore(
            hostname, port, world_size, True, timeout,
            multi_tenant=True, master_listen_fd=server.detach(), use_libuv=use_libuv,
        )

    rendezvous._create_c10d_store = create_store


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


def worker(loop: dict[str, Any]) -> None:
    """One Ray Train worker: set up, resume if a checkpoint exists, fit, test, report."""
    import ray.train
    import ray.train.torch

    from kon_ray.training import World, train_and_test, write_results

    config = RunConfig.from_dict(loop["config"])
    context = ray.train.get_context()
    world = World(context.get_world_rank(), context.get_world_size())
    device = ray.train.torch.get_device() if config.train.gpus_per_worker > 0 else torch.device("cpu")
    if device.type == "cpu" and config.train.threads is None:
        torch.set_num_threads(max(1, int(config.train.cpus_per_worker or 1)))

    def on_checkpoint(
        engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None,
        identity: RunIdentity,
    ) -> None:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(Path(folder), engine, state, best, world.rank, loop["config"], identity)
            saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(dict(record), checkpoint=saved)

    with tempfile.TemporaryDirectory() as local:
        resume = _restore(ray.train.get_checkpoint(), Path(local))
        if resume is not None and (resume / "metrics.json").exists():
            check_finished_on_same_data(resume, config)
            return  # finished before the restart: nothing left to do
        outcome = train_and_test(config, world, on_checkpoint, resume, device)
    metrics = outcome.metrics
    metrics["nodes"] = world.gather(ray.get_runtime_context().get_node_id())  # each rank's Ray node
    metrics["ended"] = now()
    with tempfile.TemporaryDirectory() as folder:
        if world.rank == 0:
            write_results(Path(folder), outcome)
        final = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        saved = ray.train.Checkpoint.from_directory(folder) if world.rank == 0 else None
        ray.train.report({**final, "final": 1}, checkpoint=saved)


def check_finished_on_same_data(finished: Path, config: RunConfig) -> None:
    """A finished run launched again on a changed KG is refused, as a resumed one is, rather than
    returning the old data's results as this run's."""
    from kon_ray.data import load_kg

    saved = json.loads((finished / "metrics.json").read_text())["data_hash"]
    now = load_kg(config.data.dataset).slice(config.data.train_limit).digest
    if saved != now:
        raise ConfigError(
            f"data.dataset={config.data.dataset}: the run of this name finished on other data "
            f"(data hash {saved} -> {now}); use another name or output folder"
        )


def _restore(saved: Any, local: Path) -> Path | None:
    if saved is None:
        return None
    saved.to_directory(str(local))
    return local


def build_trainer(
    config: RunConfig,
    name: str,
    storage: str,
    max_failures: int = 0,
    callbacks: list[Any] | None = None,
) -> Any:
    """A ``TorchTrainer`` running ``worker`` for ``config``, whose ``train.cpus_per_worker`` is resolved.

    The run named ``name`` under ``storage`` resumes from its latest checkpoint when one exists.
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    t = config.train
    return TorchTrainer(
        worker,
        train_loop_config={"config": config.to_dict()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.workers,
            use_gpu=t.gpus_per_worker > 0,
            resources_per_worker=worker_resources(config),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def user_error(error: Exception) -> ConfigError | None:
    """A worker's ConfigError (a checkpoint of another run, or a broken one) as one line, not Ray's
    report of the failed worker group."""
    for failure in getattr(error, "worker_failures", {}).values():
        if isinstance(failure, ConfigError):
            return ConfigError(failure.args[0] if failure.args else str(failure))
    return None


def launch(
    config: RunConfig,
    out: Path,
    address: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
) -> dict[str, Any]:
    """Run ``config`` on Ray Train workers; copy ``metrics.json``, ``ranks.parquet``, ``model/`` into ``out``.

    ``storage`` (a folder, or s3://... on a cluster) and ``name`` locate the run's checkpoints:
    launching again with the same two resumes from the latest checkpoint.
    """
    from kon_ray.data import check_data, load_kg

    check_data(config, load_kg(config.data.dataset).slice(config.data.train_limit))
    if config.train.deepspeed_config and not Path(config.train.deepspeed_config).is_file():
        raise ConfigError(f"train.deepspeed_config={config.train.deepspeed_config}: no such file")
    start_ray(address)
    nodes = cluster_nodes()
    config = resolve_cpus(config, nodes)
    check_resources(config, total_resources(nodes), nodes)
    from kon_ray.train_reports import reports_to
    from kon_ray.training.monitor import Monitor

    storage = storage or str((out / "ray").resolve())
    with Monitor(out, bar=True) as monitor, reports_to(monitor.record) as reports:
        try:
            result = build_trainer(config, name or out.name, storage, max_failures, [reports]).fit()
        except Exception as error:  # Ray Train's report of the failed worker group
            found = user_error(error)
            if found is None:
                raise
            raise found from None
    if result.error is not None:
        raise result.error
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        for file in RESULT_FILES:
            shutil.copyfile(Path(folder) / file, out / file)
        shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
        shutil.copytree(Path(folder) / MODEL_DIR, out / MODEL_DIR)
    return json.loads((out / "metrics.json").read_text())
