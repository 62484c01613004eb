"""The ``kon-ray`` command line: each command's arguments and the function that runs it.

The commands run from ``runs`` (train, evaluate, export, predict), ``data`` (stats, baseline),
``studies`` (study validate|run|status|export) and ``config``; ``report`` is here, the one
command that reads ``analysis``. Each imports its heavy libraries when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kon_ray import console
from kon_ray.cli import config, data, runs, studies
from kon_ray.config import ConfigError
from kon_ray.run_identity import rerank_settings


def _user_errors() -> tuple[type[Exception], ...]:
    """ConfigError, and KGFormatError once the data layer is loaded (only it raises one): importing it
    up front would load torch into the commands that only read JSON."""
    lines = sys.modules.get("kon_ray.data.lines")
    return (ConfigError,) if lines is None else (ConfigError, lines.KGFormatError)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # settings after an option: evaluate RUN --split valid eval.ties=...
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    console.setup(args.verbose)
    try:
        args.func(args)
    except _user_errors() as error:
        print(f"kon-ray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        console.close_log()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kon-ray", description="The ``kon-ray`` command line.")
    parser.add_argument("-v", "--verbose", action="store_true", help="everything on the terminal: debug lines, Ray's output")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train K-ON and evaluate it (filtered ranking)")
    train.add_argument("overrides", nargs="*", help="dotted key=value settings, e.g. model.k=4 train.max_minutes=5")
    train.add_argument("--out", help="output folder (default: runs/train-<time>)")
    train.add_argument("--address", help="join this Ray cluster ('auto' on a cluster node); default: a local Ray")
    train.add_argument("--storage", help="Ray Train storage for checkpoints (default: OUT/ray; s3://... on a cluster)")
    train.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    train.add_argument("--no-ray", action="store_true", help="one worker in this process, for debugging")
    train.set_defaults(func=runs.train)

    settings = commands.add_parser("config", help="every setting with its type, default, help and the paper's value")
    settings.add_argument("section", nargs="?", help="a section (model, model.embedded, train, ...) or one key")
    settings.add_argument("--markdown", action="store_true", help="all settings as docs/configuration.md")
    settings.set_defaults(func=config.show)

    data_commands = commands.add_parser("data", help="inspect a KG").add_subparsers(dest="data_command", required=True)
    stats = data_commands.add_parser(
        "stats", help="counts, duplicates, leakage, shared names and first-K tokens, cuts at K and the anchor cap"
    )
    stats.add_argument("dataset", help="DB15K, MKG-W or a KG folder (formats: docs/data.md)")
    stats.add_argument("overrides", nargs="*", help="e.g. model.k=4 model.backbone=PATH")
    stats.set_defaults(func=data.stats)
    baseline = data_commands.add_parser(
        "baseline", help="test metrics of ranking answers by what their relation alone says"
    )
    baseline.add_argument("dataset", help="DB15K, MKG-W or a KG folder (formats: docs/data.md)")
    baseline.add_argument("overrides", nargs="*", help="e.g. model.k=4 model.embedded.vocab_size=8192")
    baseline.set_defaults(func=data.baseline)

    study = commands.add_parser("study", help="run a study (grid, ablations, Optuna search) on Ray Tune")
    study_commands = study.add_subparsers(dest="study_command", required=True)
    storage_help = "folder holding each study's folder (default: runs/studies)"
    validate = study_commands.add_parser("validate", help="build every config of a study file without running it")
    validate.add_argument("study", help="a study file, e.g. studies/heads.py")
    validate.add_argument("overrides", nargs="*", help="dotted key=value settings on top of every trial")
    validate.set_defaults(func=studies.validate)
    run = study_commands.add_parser("run", help="run a study (or finish it, with --resume)")
    run.add_argument("study", help="a study file, e.g. studies/heads.py")
    run.add_argument("overrides", nargs="*", help="dotted key=value settings on top of every trial")
    run.add_argument("--address", help="join this Ray cluster ('auto' on a cluster node); default: a local Ray")
    run.add_argument("--storage", default="runs/studies", help=storage_help)
    run.add_argument("--resume", action="store_true", help="finish a study whose driver stopped; finished trials stay")
    run.add_argument("--force", action="store_true", help="with --resume: resume a changed study file")
    run.set_defaults(func=studies.run)
    export = study_commands.add_parser("export", help="write the result table as parquet and CSV")
    export.add_argument("study", help="a study file or a study folder")
    export.add_argument("--storage", default="runs/studies", help=storage_help)
    export.add_argument("--out", help="output folder (default: the study folder)")
    export.set_defaults(func=studies.export)
    status = study_commands.add_parser(
        "status", help="trial counts and the best so far, from disk (also while it runs)"
    )
    status.add_argument("study", help="a study file or a study folder")
    status.add_argument("--storage", default="runs/studies", help=storage_help)
    status.set_defaults(func=studies.status)

    report = commands.add_parser("report", help="one offline HTML report of studies, beside the paper's values")
    report.add_argument("studies", nargs="+", help="study files or study folders")
    report.add_argument("--storage", default="runs/studies", help=storage_help)
    report.add_argument("--out", help="HTML file (default: <storage>/report-<studies>.html)")
    report.set_defaults(func=_report)

    run_help = "a run folder (kon-ray train --out) or a study trial (<study folder>/<trial id>)"
    export = commands.add_parser("export", help="write a run's LoRA adapter (or whole model) and K-ON heads")
    export.add_argument("run", help=run_help)
    export.add_argument("--out", required=True, help="folder to write")
    export.set_defaults(func=runs.export)
    predict = commands.add_parser("predict", help="a trained run's top answers to (ENTITY, RELATION, ?)")
    predict.add_argument("run", help=run_help)
    predict.add_argument(
        "entity", nargs="?", help="the given entity: its name, its id in the KG's files, or #INDEX (e.g. #12)"
    )
    predict.add_argument("relation", nargs="?", help="the relation: its name, its id or #INDEX")
    predict.add_argument("--head", action="store_true", help="ask for the head: (?, RELATION, ENTITY)")
    predict.add_argument(
        "--top", type=int, default=10, help="answers shown, and those tied with the last (default: 10)"
    )
    predict.add_argument("--queries", help="a file of 'entity<TAB>relation[<TAB>head|tail]' lines")
    predict.set_defaults(func=runs.predict)
    evaluate = commands.add_parser("evaluate", help="re-rank a trained run without training")
    evaluate.add_argument("run", help=run_help)
    evaluate.add_argument(
        "overrides", nargs="*", help=f"settings of the ranking: {rerank_settings()}; e.g. eval.ties=optimistic"
    )
    evaluate.add_argument(
        "--split", choices=("train", "valid", "test"), default="test",
        help="the split to rank; train shows how well the run fits what it trained on",
    )  # fmt: skip
    evaluate.add_argument(
        "--limit", type=int,
        help="rank the split's first N triples (default: data.valid_limit or data.test_limit; train: all)",
    )  # fmt: skip
    evaluate.set_defaults(func=runs.evaluate)

    from kon_ray import bench  # a light import: each benchmark loads when it runs

    bench.add_arguments(commands.add_parser("bench", help=bench.HELP))
    return parser


def _report(args: argparse.Namespace) -> None:
    from analysis.report import StudyInfo, build_report
    from kon_ray.paper import published_from_json
    from kon_ray.studies.folder import folder_of, read_spec
    from kon_ray.studies.table import study_table

    tables, infos = [], []
    for target in args.studies:
        folder = folder_of(target, args.storage)
        spec = read_spec(folder)
        optuna_db = folder / "optuna.db"
        storage = f"sqlite:///{optuna_db}" if optuna_db.is_file() else None
        tables.append(study_table(folder))
        infos.append(StudyInfo(
            name=spec.study, analyses=spec.analyses, paper=published_from_json(spec.paper),
            optuna_storage=storage, optuna_study=spec.study if storage else None,
        ))  # fmt: skip
    out = Path(args.out or Path(args.storage) / f"report-{'-'.join(i.name for i in infos)}.html")
    try:
        print(f"report: {build_report(tables, out, infos).resolve()}")
    except ValueError as error:  # e.g. no finished trial yet
        raise ConfigError(f"study {', '.join(i.name for i in infos)}: {error}") from None
