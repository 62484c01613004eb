"""A one-worker trial in its Tune trial's own process: no Ray Train controller or worker processes.

A trial of ``train.workers=1`` trains here, in the process Tune started for it (and reuses for the
next trial), where Ray Train would start a controller and a worker process and import torch,
transformers and DeepSpeed in each. Each validation still leaves a checkpoint to resume from, in
the trial's run folder (``train-<trial_id>``, laid out as Ray Train's: ``checkpoint_<time>``
folders, the newest ``KEEP`` kept), written into a new folder that is then renamed into place; the
final one holds ``metrics.json`` and ``ranks.parquet``. A retried or resumed trial continues from
the newest checkpoint with the same step count and data order.
"""

from __future__ import annotations

import datetime
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kon_ray.config import RunConfig
from kon_ray.results import now

KEEP = 2


def publish(run: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a new hidden folder in ``run``, rename it to the newest ``checkpoint_<time>``,
    then drop all but the newest ``KEEP``: a reader never sees a checkpoint half written."""
    run.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=run))
    try:
        write(partial)
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d_%H-%M-%S.%f")
        folder = run / f"checkpoint_{stamp}"
        partial.rename(folder)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    for old in sorted(run.glob("checkpoint_*"))[:-KEEP]:
        shutil.rmtree(old)
    return folder


def latest_checkpoint(run: Path) -> Path | None:
    """The newest checkpoint of ``run`` that training can resume from."""
    folders = [f for f in sorted(run.glob("checkpoint_*")) if (f / "state.json").is_file()]
    return folders[-1] if folders else None


def run_inline(config: RunConfig, run: Path) -> dict[str, Any]:
    """Train and test ``config`` (one worker) in this process, reporting each validation to Tune;
    resume from ``run``'s newest checkpoint."""
    import ray
    import torch
    from ray import tune

    from kon_ray import checkpoint
    from kon_ray.training import World, init_process_group, train_and_test, write_results

    init_process_group()
    device = torch.device("cuda" if config.train.gpus_per_worker > 0 else "cpu")
    if device.type == "cpu" and config.train.threads is None:
        torch.set_num_threads(max(1, int(config.train.cpus_per_worker or 1)))

    def on_checkpoint(
        engine: Any, record: dict[str, float], state: Any, best: dict[str, Any] | None, identity: Any
    ) -> None:
        publish(run, lambda folder: checkpoint.save(folder, engine, state, best, 0, config.to_dict(), identity))
        tune.report(dict(record))

    outcome = train_and_test(config, World(), on_checkpoint, latest_checkpoint(run), device)
    metrics = outcome.metrics
    metrics["nodes"] = [ray.get_runtime_context().get_node_id()]
    metrics["ended"] = now()
    publish(run, lambda folder: write_results(folder, outcome))
    return metrics
