"""Batch size, HTT weights and Table 3's 'w/o L_nce' at about the same number of queries seen.

The float32 default of 96 queries per step (48 x 2, one thread) that these were measured at,
with step budgets so that a loaded machine changes the time, not the result. The figures are in
results/db15k-equal-queries.csv (docs/results.md).
"""

from kon_ray.studies import Study

study = Study(
    name="cpu_equal_queries",
    base={"model.dtype": "float32", "train.micro_batch": 48, "train.grad_accum": 2, "train.threads": 1},
    variants={
        "default": {"train.max_steps": 5055},
        "48 per step": {"train.grad_accum": 1, "train.max_steps": 9615},
        "192 per step": {"train.grad_accum": 4, "train.max_steps": 2528},
        "192 per step, lr 2e-3": {"train.grad_accum": 4, "train.lr": 2e-3, "train.max_steps": 2800},
        "384 per step": {"train.grad_accum": 8, "train.max_steps": 1400},
        "w/o L_nce": {"loss.nce_weight": 0, "train.max_steps": 5055},
        "HTT weights 1": {"loss.sft_weight": 1, "loss.tdt_weight": 1, "train.max_steps": 5055},
        "w/o L_nce, HTT weights 1": {
            "loss.nce_weight": 0, "loss.sft_weight": 1, "loss.tdt_weight": 1, "train.max_steps": 5055
        },
    },
    max_concurrent_trials=2,
)
