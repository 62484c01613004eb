"""Running a study on Ray Tune: one Tune trial per config.

A one-worker trial trains in its Tune trial's own process (``inline``, which Tune reuses for the
next trial); a trial of more workers launches a ``TorchTrainer`` running ``distributed.worker``.
Either way its run, ``train-<trial_id>`` under the study's folder, holds a checkpoint per
validation, so a retried or resumed trial continues from its own latest one, and a finished run's
final result, which a resume reports without training again. Validation reports reach Tune (for
ASHA and progress); the trial then reports its final metrics and provenance once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kon_ray import faults
from kon_ray.config import ConfigError, RunConfig
from kon_ray.distributed import (
    build_trainer,
    check_resources,
    cluster_nodes,
    cpus_per_worker,
    resolve_cpus,
    start_ray,
    total_resources,
    worker_resources,
    worker_slots,
)
from kon_ray.paper import published_to_json
from kon_ray.results import now, write_atomic, write_json
from kon_ray.studies.folder import (
    SPEC_FILE,
    STARTED_FILE,
    TrialSpec,
    definition,
    experiment_dir,
    final_row,
    finished_metrics,
    run_folder,
    started_at,
)
from kon_ray.studies.resume import check_resume, check_same_data
from kon_ray.studies.study import Study, check_study, trial_count

log = logging.getLogger(__name__)

SLOT = "trial_slot"  # a 0-CPU resource a trial's driver holds, so that only workers take CPUs
ASHA_MAX_REPORTS = 1000


def run_trial(params: dict[str, Any], spec: TrialSpec) -> None:
    """The Tune function trainable: one trial, resumed from its run's checkpoint if it has one.

    A one-worker trial trains in this process (``inline``); more workers run as a Ray Train run.
    A run that already holds its final result (its driver stopped before Tune saved that) reports
    it again without training or starting any worker.
    """
    from ray import tune

    config = spec.config(params)
    trial_id = tune.get_context().get_trial_id()
    run = run_folder(spec, trial_id)
    if started_at(run) is None:
        write_atomic(run / STARTED_FILE, now().encode())
    metrics = finished_metrics(run)
    if metrics is not None:
        log.info("trial %s: its run had finished; reporting its result without starting it again", trial_id)
    elif config.train.workers == 1:
        from kon_ray.studies.inline import run_inline

        metrics = run_inline(config, run)
    else:
        from kon_ray.studies.callbacks import ValidationToTune

        trainer = build_trainer(config, run.name, spec.train_storage, 0, [ValidationToTune()])
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        with result.checkpoint.as_directory() as folder:
            metrics = json.loads((Path(folder) / "metrics.json").read_text())
    faults.before_final_report()
    tune.report(final_row(metrics, config, started_at(run)))


def trial_spec(study: Study, folder: Path, extra: Mapping[str, Any]) -> TrialSpec:
    """What every trial of ``study`` in ``folder`` shares, ``extra`` on top of every trial."""
    return TrialSpec(
        study=study.name,
        base=dict(study.base),
        variants=study.variants or {},
        extra=dict(extra),
        varied=study.varied,
        metric=study.metric,
        mode=study.mode,
        trials=trial_count(study),
        train_storage=str(folder / "train"),
        analyses=study.analyses,
        paper=published_to_json(study.paper),
        definition=definition(study),
    )


def save_spec(folder: Path, spec: TrialSpec, overrides: Mapping[str, Any]) -> None:
    """Write ``study.json``: ``spec`` with the command line's ``overrides`` as its ``extra``."""
    write_json(folder / SPEC_FILE, {**spec.to_json(), "extra": dict(overrides)})


def plan_resources(
    study: Study, configs: list[RunConfig], resources: dict[str, float], nodes: list[dict[str, float]]
) -> tuple[int, float | None, dict[str, float]]:
    """Concurrent trials, CPUs per CPU worker (None: as configured) and each trial driver's own request.

    ``resources`` are the cluster's totals and ``nodes`` each node's resources. Trials run at once
    only as far as the nodes hold all their workers, so none waits forever.
    """
    driver = {SLOT: 1.0} if resources.get(SLOT, 0) >= 1 else {"CPU": 0.01}
    concurrent = max(1, min(study.max_concurrent_trials, trial_count(study), int(resources.get(SLOT, study.max_concurrent_trials))))
    workers = max(c.train.workers for c in configs)
    cpu_only = all(c.train.gpus_per_worker == 0 for c in configs)
    unset = any(c.train.cpus_per_worker is None for c in configs)
    cpus = cpus_per_worker(workers * concurrent, nodes) if cpu_only and unset else None
    resolved = [c if cpus is None or c.train.cpus_per_worker is not None else _with_cpus(c, cpus) for c in configs]

    def fits(n: int) -> bool:
        for c in resolved:
            t = c.train
            if n * (t.workers * (t.cpus_per_worker or 1.0) + driver.get("CPU", 0)) > resources.get("CPU", 0):
                return False
            if n * t.workers > worker_slots(c, nodes):
                return False
        return True

    while concurrent > 1 and not fits(concurrent):
        concurrent -= 1
    for c in resolved:
        check_resources(c, resources, nodes)
    return concurrent, cpus, driver


def _with_cpus(config: RunConfig, cpus: float) -> RunConfig:
    return dataclasses.replace(config, train=dataclasses.replace(config.train, cpus_per_worker=cpus))


def run_study(
    study: Study,
    source: str | Path,
    overrides: Mapping[str, Any] = {},  # noqa: B006
    storage: str | Path = "runs/studies",
    address: str | None = None,
    resume: bool = False,
    force: bool = False,
) -> pd.DataFrame:
    """Run (or with ``resume``, finish) ``study``; return and export its result table.

    ``force`` resumes a study whose file changed since it ran."""
    from kon_ray.studies.table import export_table, study_table

    folder = experiment_dir(study, storage)
    if resume and (folder / SPEC_FILE).is_file():
        overrides = check_resume(study, source, folder, overrides, force)
        check_same_data(folder)
    configs = check_study(study, source, overrides)
    start_ray(address, resources={SLOT: 1024})
    from ray import tune

    nodes = cluster_nodes()
    concurrent, cpus, driver = plan_resources(study, configs, total_resources(nodes), nodes)
    extra = {**overrides, **({"train.cpus_per_worker": cpus} if cpus is not None and "train.cpus_per_worker" not in overrides else {})}
    spec = trial_spec(study, folder, extra)
    inline = all(c.train.workers == 1 for c in configs)  # each trial trains in its own process
    resources = _worker_request(spec, nodes) if inline else driver
    trainable = tune.with_resources(tune.with_parameters(run_trial, spec=spec), resources)
    if tune.Tuner.can_restore(str(folder)):
        if not resume:
            raise ConfigError(f"{folder}: this study has run before; pass --resume to finish it (or another --storage)")
        log.info("%s: resuming from %s", study.name, folder)
        try:
            tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_errored=True)
        except (ValueError, EOFError, pickle.UnpicklingError) as error:
            cause = f"{type(error).__name__}: {error}"
            raise ConfigError(f"{folder}: Tune's saved state cannot be read ({cause})") from None
        if force:  # trials still to run follow the study file as it is now, and so does the table
            save_spec(folder, spec, overrides)
    else:
        save_spec(folder, spec, overrides)
        tuner = _new_tuner(study, spec, trainable, folder, concurrent)
    log.info("%s: %d trials, up to %d at once, in %s", study.name, trial_count(study), concurrent, folder)
    logging.getLogger("tensorboardX.summary").setLevel(logging.WARNING)  # renames of 'hits@k' metrics
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's new output prints a banner even at verbose=0
    tuner.fit()
    table = study_table(folder)
    export_table(table, folder, study.name)
    return table


def _worker_request(spec: TrialSpec, nodes: list[dict[str, float]]) -> Any:
    """What an inline trial's process asks for: its one worker's CPUs and GPUs."""
    from ray.tune import PlacementGroupFactory

    def request(params: dict[str, Any]) -> Any:
        return PlacementGroupFactory([worker_resources(resolve_cpus(spec.config(params), nodes))])

    return request


def _new_tuner(study: Study, spec: TrialSpec, trainable: Any, folder: Path, concurrent: int) -> Any:
    from ray import tune

    from kon_ray.studies.callbacks import Progress

    search_alg = None
    if study.space is not None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        param_space: dict[str, Any] = {key: _domain(p) for key, p in study.space.items()}
        param_space["seed"] = study.seeds[0]
        folder.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'optuna.db'}")
        search_alg = OptunaSearch(study_name=study.name, storage=storage, seed=study.seeds[0])
    else:
        param_space = _grid_space(study)
    scheduler = None
    if study.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=ASHA_MAX_REPORTS, grace_period=1, reduction_factor=2)
    return tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=study.metric,
            mode=study.mode,
            search_alg=search_alg,
            scheduler=scheduler,
            num_samples=study.num_samples,
            max_concurrent_trials=concurrent,
            reuse_actors=True,  # the next trial runs in a finished one's process, its imports done
            time_budget_s=study.time_budget_minutes * 60 if study.time_budget_minutes else None,
        ),
        run_config=tune.RunConfig(
            name=study.name,
            storage_path=str(folder.parent),
            failure_config=tune.FailureConfig(max_failures=study.max_retries),
            callbacks=[Progress(study.name, spec.metric, spec.mode, trial_count(study))],
            verbose=0,
        ),
    )


def _grid_space(study: Study) -> dict[str, Any]:
    from ray import tune

    space: dict[str, Any] = {key: tune.grid_search(list(values)) for key, values in (study.grid or {}).items()}
    if study.variants is not None:
        space["variant"] = tune.grid_search(list(study.variants))
    space["seed"] = tune.grid_search(list(study.seeds))
    return space


def _domain(param: Any) -> Any:
    from ray import tune

    from kon_ray.studies.study import Choice, IntRange

    if isinstance(param, Choice):
        return tune.choice(list(param.values))
    if isinstance(param, IntRange):
        return (tune.lograndint if param.log else tune.randint)(param.low, param.high + 1)
    return (tune.loguniform if param.log else tune.uniform)(param.low, param.high)
