"""15 minutes of training on 2 CPU cores: the default, and the precision and micro-batch settings it beat.

The figures are in results/db15k-15min.csv (docs/results.md), recorded with the `kon-ray train`
command each row names; these variants are those commands. `model.dtype=auto` is mixed precision
on a CPU with native bfloat16, as on the machine that recorded them. One trial at a time, so that
each has both cores; a time budget makes the result follow the host's speed.
"""

from kon_ray.studies import Study

study = Study(
    name="cpu_15min",
    base={"train.max_minutes": 15.0},
    variants={
        "default": {},
        "mixed 96 x 1": {"train.micro_batch": 96},
        "mixed 48 x 2": {"train.micro_batch": 48, "train.grad_accum": 2},
        "float32 48 x 2": {"model.dtype": "float32", "train.micro_batch": 48, "train.grad_accum": 2},
        "2 workers of 48": {"train.workers": 2, "train.micro_batch": 48},
    },
    seeds=(0, 1),
    max_concurrent_trials=1,
)
