"""What ``study run --resume`` checks before Ray starts: that it resumes the same study.

The study file must say what it said when the study ran (or ``--force``), the command line's
overrides must be the first run's, and every trial that has run must resume on the KG it ran on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError
from kon_ray.studies.folder import (
    definition,
    differences,
    has_trials,
    read_spec,
    read_trials,
    run_folder,
    saved_data_hash,
)
from kon_ray.studies.study import Study

log = logging.getLogger(__name__)


def check_resume(
    study: Study, source: str | Path, folder: Path, overrides: Mapping[str, Any], force: bool
) -> dict[str, Any]:
    """The overrides a resume runs with: the first run's. A changed study file is refused unless
    ``force`` (trials still to run then follow the file as it is now)."""
    saved = read_spec(folder)
    if overrides and dict(overrides) != dict(saved.extra):
        raise ConfigError(
            f"--resume: overrides {dict(overrides)} differ from the run's {dict(saved.extra)}; give none"
        )
    changed = differences(saved.definition, definition(study)) if saved.definition else []
    if changed and not force:
        raise ConfigError(
            f"--resume: {source} changed since {folder} ran ({'; '.join(changed[:5])}); "
            "undo the change, or pass --force to resume with the file as it is now"
        )
    if changed:
        log.warning(
            "%s: %s changed since it ran (%s); resuming (--force)", study.name, source, "; ".join(changed)
        )
    return dict(saved.extra)


def check_same_data(folder: Path) -> None:
    """Every trial of the study in ``folder`` that has run resumes on the KG it ran on: a finished
    result or a checkpoint from other data is refused before Ray starts."""
    from kon_ray.data import load_kg

    spec, digests = read_spec(folder), {}
    for trial in read_trials(folder) if has_trials(folder) else []:
        saved = saved_data_hash(run_folder(spec, trial.trial_id))
        if saved is None:
            continue
        data = spec.config(trial.config).data
        key = (data.dataset, data.train_limit)
        if key not in digests:
            digests[key] = load_kg(data.dataset).slice(data.train_limit).digest
        if saved != digests[key]:
            raise ConfigError(
                f"--resume: trial {trial.trial_id} of {folder} ran on other data "
                f"(data.dataset={data.dataset}: data hash {saved} -> {digests[key]}); "
                "restore that KG, or run the study in another --storage"
            )
