"""``kon-ray study validate|run|status|export``."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from kon_ray import console
from kon_ray.config import ConfigError


def validate(args: argparse.Namespace) -> None:
    from kon_ray.overrides import parse_overrides
    from kon_ray.studies.study import check_study, load_study, trial_count

    study = load_study(args.study)
    configs = check_study(study, args.study, parse_overrides(args.overrides))
    varies = ", ".join(study.varied) or "nothing (replicates only)"
    print(f"{args.study}: study {study.name!r} OK: {trial_count(study)} trials, {len(configs)} configs built; varies {varies}")


def run(args: argparse.Namespace) -> None:
    from kon_ray.overrides import parse_overrides
    from kon_ray.studies.study import load_study

    if args.address is None:
        from kon_ray.distributed import LOOPBACK_ENV

        os.environ.update(LOOPBACK_ENV)  # before Ray is first imported
    from kon_ray.studies.folder import experiment_dir, read_spec
    from kon_ray.studies.table import status_text
    from kon_ray.studies.tune import run_study

    study = load_study(args.study)
    folder = experiment_dir(study, args.storage)
    new = not folder.exists()
    console.open_log(folder)
    try:
        overrides = parse_overrides(args.overrides)
        table = run_study(study, args.study, overrides, args.storage, args.address, args.resume, force=args.force)
    except ConfigError:
        if new and [p.name for p in folder.iterdir()] == [console.LOG_FILE]:  # refused before it ran
            console.close_log()
            shutil.rmtree(folder)
        raise
    print(status_text(table, read_spec(folder)))
    print(f"results: {folder / study.name}.parquet")
    print(f"TensorBoard: tensorboard --logdir {folder}")


def status(args: argparse.Namespace) -> None:
    from kon_ray.studies.folder import folder_of, read_spec
    from kon_ray.studies.table import status_text, study_table

    folder = folder_of(args.study, args.storage)
    print(status_text(study_table(folder), read_spec(folder)))


def export(args: argparse.Namespace) -> None:
    from kon_ray.studies.folder import folder_of, read_spec
    from kon_ray.studies.table import export_table, study_table

    folder = folder_of(args.study, args.storage)
    spec = read_spec(folder)
    for path in export_table(study_table(folder), Path(args.out) if args.out else folder, spec.study):
        print(path)
