"""A few minutes on a 2-core CPU: K = 2 and 8 on a DB15K slice, to try the study machinery."""

from kon_ray.studies import Study

study = Study(
    name="quickstart",
    base={
        "data.train_limit": 2000,
        "data.valid_limit": 100,
        "data.test_limit": 200,
        "train.max_minutes": 1.0,
        "train.evals_per_epoch": 2,
        "loss.negatives": 32,
    },
    grid={"model.k": [2, 8]},
    max_concurrent_trials=2,
    analyses=("heads_curve",),
)
