"""1,200 steps of 96 queries (48 x 2, float32, one thread): HTT weights, eq. 12's floor, precision, seeds.

The settings a short run can tell apart, at the seed spread that bounds what it can tell. The
figures are in results/db15k-1200-steps.csv (docs/results.md).
"""

from kon_ray.studies import Study

study = Study(
    name="cpu_1200_steps",
    base={
        "model.dtype": "float32",
        "train.micro_batch": 48,
        "train.grad_accum": 2,
        "train.threads": 1,
        "train.max_steps": 1200,
    },
    variants={
        "default": {},
        "HTT weights 1": {"loss.sft_weight": 1, "loss.tdt_weight": 1},
        "HTT weights 0.3": {"loss.sft_weight": 0.3, "loss.tdt_weight": 0.3},
        "HTT weights 0.03": {"loss.sft_weight": 0.03, "loss.tdt_weight": 0.03},
        "floor 3e-5": {"loss.floor": 3e-5},
        "floor 1e-3": {"loss.floor": 1e-3},
        "floor 3e-3": {"loss.floor": 3e-3},
        "mixed precision": {"model.dtype": "mixed"},
    },
    seeds=(0, 1),
    max_concurrent_trials=2,
)
