"""The Ray Train run of K-ON: ``launch`` checks it, then runs ``worker`` on ``train.workers``
Ray Train workers, each running DeepSpeed, and copies the results out.

Each evaluation reports metrics and a checkpoint; a failed worker group restarts from the latest
checkpoint, and so does a re-launch under the same name and storage.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from kon_ray import checkpoint
from kon_ray.checkpoint import MODEL_DIR, LoopState
from kon_ray.config import ConfigError, RunConfig
from kon_ray.distributed.ray_start import start_ray
from kon_ray.distributed.resources import check_resources, cluster_nodes, resolve_cpus, total_resources, worker_resources
from kon_ray.results import now
from kon_ray.run_identity import RunIdentity

RESULT_FILES = ("metrics.json", "ranks.parquet")


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
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data import check_data, load_kg
    from kon_ray.data.prompts import check_answer_tokens

    kg = load_kg(config.data.dataset).slice(config.data.train_limit)
    check_data(config, kg)
    check_answer_tokens(kg, load_tokenizer(config.model, kg, config.data.prompt), config.data.prompt)
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
