"""Optuna TPE over K, |N|, the LoRA ranks, the loss weights and the learning rate; ASHA stops
poor trials after their first validations. Open ``runs/studies/hpo/optuna.db`` in optuna-dashboard.
Its report shows the search (history, importances); no paper figure, as its trials differ in everything."""

from kon_ray.studies import Choice, FloatRange, IntRange, Study

study = Study(
    name="hpo",
    base={"train.evals_per_epoch": 4},
    space={
        "model.k": IntRange(1, 16),
        "loss.negatives": IntRange(16, 1024, log=True),
        "model.lora_r": Choice((4, 8, 16, 32)),
        "model.score_lora_r": Choice((4, 8, 16, 32)),
        "loss.nce_weight": FloatRange(0.1, 2.0),
        "loss.sft_weight": FloatRange(0.01, 1.0, log=True),
        "loss.tdt_weight": FloatRange(0.01, 1.0, log=True),
        "train.lr": FloatRange(1e-5, 1e-3, log=True),
    },
    num_samples=40,
    scheduler="asha",
)
