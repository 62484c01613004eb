"""K-ON training on Ray Train workers, each running DeepSpeed: a laptop or an A100 cluster.

``ray_start`` starts or joins Ray; ``resources`` reads the cluster's nodes and checks that a
run's workers fit on them; ``train_run`` launches the run (gloo and fp32 on CPU, nccl and bf16 on
CUDA) and restarts a failed worker group from its latest checkpoint.
"""

from kon_ray.distributed.ray_start import LOOPBACK_ENV, start_ray
from kon_ray.distributed.resources import (
    check_resources,
    cluster_nodes,
    cpus_per_worker,
    fleet_nodes,
    resolve_cpus,
    total_resources,
    worker_resources,
    worker_slots,
)
from kon_ray.distributed.train_run import build_trainer, launch, worker

__all__ = [
    "LOOPBACK_ENV",
    "build_trainer",
    "check_resources",
    "cluster_nodes",
    "cpus_per_worker",
    "fleet_nodes",
    "launch",
    "resolve_cpus",
    "start_ray",
    "total_resources",
    "worker",
    "worker_resources",
    "worker_slots",
]
