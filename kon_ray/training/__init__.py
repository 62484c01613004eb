"""Training K-ON: ``setup -> fit -> evaluate``, plain functions, on one or many DeepSpeed workers.

``train_and_test`` is the job of one data-parallel worker; ``run`` runs it in this process
without Ray, and ``kon_ray.distributed`` runs it on Ray Train workers.
"""

from kon_ray.training.engine import Schedule, deepspeed_config, init_process_group, make_engine
from kon_ray.training.evaluate import evaluate
from kon_ray.training.fit import OnEval, compute_losses, fit, micro_seed
from kon_ray.training.run import OnCheckpoint, Outcome, run, train_and_test, write_results
from kon_ray.training.setup import Setup, default_device, setup, trainable_parameters
from kon_ray.training.world import World

__all__ = [
    "OnCheckpoint",
    "OnEval",
    "Outcome",
    "Schedule",
    "Setup",
    "World",
    "compute_losses",
    "deepspeed_config",
    "default_device",
    "evaluate",
    "fit",
    "init_process_group",
    "make_engine",
    "micro_seed",
    "run",
    "setup",
    "train_and_test",
    "trainable_parameters",
    "write_results",
]
