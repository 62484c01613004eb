"""The default at a step budget of 1,200 steps (230k queries), on DB15K and MKG-W, two seeds.

A step budget makes a loaded machine change the time, not the result; one thread per trial, two
trials at once. The figures are in results/cpu_1200_steps.csv (docs/results.md), exported with
`kon-ray study export studies/cpu_1200_steps.py --out results/`.
"""

from kon_ray.studies import Study

study = Study(
    name="cpu_1200_steps",
    base={"train.max_steps": 1200, "train.threads": 1},
    variants={"DB15K": {}, "MKG-W": {"data.dataset": "MKG-W"}},
    seeds=(0, 1),
    max_concurrent_trials=2,
)
