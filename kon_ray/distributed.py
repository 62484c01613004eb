"""K-ON training on Ray Train workers, each running DeepSpeed: a laptop or an A100 cluster.

``launch`` validates the run against the cluster before any worker starts, then runs
``worker`` on ``train.workers`` Ray Train workers (gloo and fp32 on CPU, nccl and bf16 on
CUDA). Each evaluation reports metrics and a checkpoint; a failed worker group restarts
from the latest checkpoint, and so does a re-launch under the same name and storage.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kon_ray import checkpoint
from kon_ray.checkpoint import LoopState
from kon_ray.config import ConfigError, RunConfig

log = logging.getLogger(__name__)

RESULT_FILES = ("metrics.json", "ranks.parquet")
# A local Ray and its workers' gloo groups on loopback only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo"}


def start_ray(address: str | None) -> None:
    """Join ``address`` (e.g. 'auto' on a cluster) or start a local Ray bound to 127.0.0.1.

    Ray reads the loopback switch when it is first imported, so this runs before any import of ray.
    """
    if address is None:
        os.environ.update(LOOPBACK_ENV)
    import ray

    if ray.is_initialized():
        return
    if address is None:
        ray.init(_node_ip_address="127.0.0.1")  # the dashboard (State API) stays on 127.0.0.1
    else:
        ray.init(address=address)


def resolve_cpus(config: RunConfig, resources: dict[str, float]) -> RunConfig:
    """Fill in ``train.cpus_per_worker`` when None: the CPUs shared out over CPU workers, 1 per GPU worker."""
    t = config.train
    if t.cpus_per_worker is not None:
        return config
    cpus = 1.0 if t.gpus_per_worker else max(1.0, float(int(resources.get("CPU", 1) // t.workers)))
    return dataclasses.replace(config, train=dataclasses.replace(t, cpus_per_worker=cpus))


def check_resources(config: RunConfig, resources: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Reject a run the cluster cannot place, before any worker starts."""
    config = resolve_cpus(config, resources)
    t = config.train
    need_gpus = t.workers * t.gpus_per_worker
    if need_gpus > resources.get("GPU", 0):
        raise ConfigError(
            f"train.workers={t.workers} x train.gpus_per_worker={t.gpus_per_worker} needs {need_gpus:g} GPUs; "
            f"the cluster has {resources.get('GPU', 0):g}"
        )
    if t.gpus_per_worker > max((n.get("GPU", 0) for n in nodes), default=0):
        raise ConfigError(
            f"train.gpus_per_worker={t.gpus_per_worker}: no node has that many GPUs "
            f"(largest: {max((n.get('GPU', 0) for n in nodes), default=0):g})"
        )
    need_cpus = t.workers * t.cpus_per_worker
    if need_cpus > resources.get("CPU", 0):
        raise ConfigError(
            f"train.workers={t.workers} x train.cpus_per_worker={t.cpus_per_worker} needs {need_cpus:g} CPUs; "
            f"the cluster has {resources.get('CPU', 0):g}"
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
    crash_after = loop.get("crash_after_step")

    def on_eval(engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None) -> None:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(Path(folder), engine, state, best, world.rank, loop["config"])
            saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(dict(record), checkpoint=saved)
        marker = loop.get("crash_marker")
        if crash_after is not None and state.step >= crash_after and marker and not Path(marker).exists():
            Path(marker).touch()  # fault injection for resume tests: crash once, after a checkpoint
            raise RuntimeError(f"injected crash after step {state.step}")

    with tempfile.TemporaryDirectory() as local:
        resume = _restore(ray.train.get_checkpoint(), Path(local))
        if resume is not None and (resume / "metrics.json").exists():
            return  # finished before the restart: nothing left to do
        metrics, table = train_and_test(config, world, on_eval, resume, device)
    with tempfile.TemporaryDirectory() as folder:
        if world.rank == 0:
            write_results(Path(folder), metrics, table)
        final = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        saved = ray.train.Checkpoint.from_directory(folder) if world.rank == 0 else None
        ray.train.report({**final, "final": 1}, checkpoint=saved)


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
    loop_extra: dict[str, Any] | None = None,
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
        train_loop_config={"config": config.to_dict(), **(loop_extra or {})},
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.workers,
            use_gpu=t.gpus_per_worker > 0,
            resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def launch(
    config: RunConfig,
    out: Path,
    address: str | None = None,
    storage: str | None = None,
    name: str | None = None,
    max_failures: int = 0,
    loop_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``config`` on Ray Train workers; copy ``metrics.json`` and ``ranks.parquet`` into ``out``.

    ``storage`` (a folder, or s3://... on a cluster) and ``name`` locate the run's checkpoints:
    launching again with the same two resumes from the latest checkpoint.
    """
    from kon_ray.data import load_kg
    from kon_ray.training import check_against_data

    check_against_data(config, load_kg(config.data.dataset).slice(config.data.train_limit))
    if config.train.deepspeed_config and not Path(config.train.deepspeed_config).is_file():
        raise ConfigError(f"train.deepspeed_config={config.train.deepspeed_config}: no such file")
    start_ray(address)
    import ray

    config = resolve_cpus(config, ray.cluster_resources())
    check_resources(config, ray.cluster_resources(), [n["Resources"] for n in ray.nodes() if n["Alive"]])
    trainer = build_trainer(config, name or out.name, storage or str((out / "ray").resolve()), max_failures, loop_extra)
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        for file in RESULT_FILES:
            shutil.copyfile(Path(folder) / file, out / file)
    return json.loads((out / "metrics.json").read_text())
