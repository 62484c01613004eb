"""The ``kon-ray`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kon_ray import console
from kon_ray.config import ConfigError, RunConfig, apply_overrides

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kon_ray.data import KnowledgeGraph
    from kon_ray.data.prompts import EncodedKG

log = logging.getLogger("kon_ray")


def _train(args: argparse.Namespace) -> None:
    config = apply_overrides(RunConfig(), args.overrides)
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.no_ray and config.train.workers != 1:
        raise ConfigError(f"train.workers={config.train.workers}: --no-ray runs exactly one worker")
    console.open_log(out)
    if args.no_ray:
        from kon_ray.training import run

        metrics = run(config, out)
    else:
        from kon_ray.distributed import launch

        metrics = launch(config, out, args.address, args.storage, max_failures=args.max_failures)
    from kon_ray.training.monitor import TENSORBOARD_DIR

    print(
        f"test MRR {metrics['test.mrr']:.4f}  Hits@1 {metrics['test.hits@1']:.4f}  "
        f"Hits@3 {metrics['test.hits@3']:.4f}  Hits@10 {metrics['test.hits@10']:.4f}  "
        f"(valid MRR {metrics.get('valid.mrr', float('nan')):.4f}, "
        f"{metrics['train_time_s'] / 60:.1f} min training, {metrics['wall_time_s'] / 60:.1f} min in all)"
    )
    print(f"results: {out / 'metrics.json'}")
    print(f"TensorBoard: tensorboard --logdir {out / TENSORBOARD_DIR}")


def _encoded_kg(args: argparse.Namespace) -> tuple[RunConfig, KnowledgeGraph, PreTrainedTokenizerBase, EncodedKG]:
    """The config, KG, tokenizer and tokenised KG that ``kon-ray data DATASET [overrides]`` names."""
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data import load_kg
    from kon_ray.data.prompts import encode_kg

    config = apply_overrides(RunConfig(), [f"data.dataset={args.dataset}", *args.overrides])
    kg = load_kg(config.data.dataset)
    tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
    encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k, config.data.anchor_tokens)
    return config, kg, tokenizer, encoded


def _share(count: int, total: int) -> str:
    return f"{count} ({count / max(total, 1):.0%})"


def _sharing(rows: object) -> int:
    """How many entries (rows of a 2-D array) equal another one."""
    import numpy as np

    values = np.asarray(rows)
    axis = 0 if values.ndim > 1 else None
    _, groups, counts = np.unique(values, axis=axis, return_inverse=True, return_counts=True)
    return int((counts[groups.reshape(-1)] > 1).sum())


def _data_stats(args: argparse.Namespace) -> None:
    import numpy as np

    config, kg, tokenizer, encoded = _encoded_kg(args)
    k, cap, e = config.model.k, config.data.anchor_tokens, kg.num_entities
    lengths, prompts = encoded.name_lengths, len(encoded.prompt_keys)
    seen = {split: len(getattr(kg, split)) - len(kg.unseen(split)) for split in ("valid", "test")}
    repeats = {split: kg.duplicates.get(split, 0) for split in ("train", "valid", "test")}
    rows = [
        ("dataset", kg.name),
        ("entities", e),
        ("relations", kg.num_relations),
        ("train", len(kg.train)),
        ("valid", len(kg.valid)),
        ("test", len(kg.test)),
        ("duplicate triples", "train {train} (dropped), valid {valid}, test {test}".format(**repeats)),
        ("valid triples also in train", _share(seen["valid"], len(kg.valid))),
        ("test triples also in train", _share(seen["test"], len(kg.test))),
        ("entities only in valid / test", f"{len(kg.only_in('valid'))} / {len(kg.only_in('test'))}"),
        ("entities sharing a name", _share(_sharing(np.array(kg.entity_names, dtype=object)), e)),
        (f"entities sharing their first K={k} tokens", _share(_sharing(encoded.entity_tokens.numpy()), e)),
        ("tokenizer", f"{config.model.backbone} ({len(tokenizer)} tokens)"),
        ("name tokens (mean / max)", f"{lengths.mean():.2f} / {lengths.max()}"),
        (f"names truncated at K={k}", f"{int((lengths > k).sum())} ({(lengths > k).mean():.2%})"),
        (f"prompts cut at data.anchor_tokens={cap}", _share(encoded.capped_prompts(cap), prompts)),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _data_baseline(args: argparse.Namespace) -> None:
    from kon_ray.baseline import baseline_metrics, relation_frequency, relation_token_prior

    config, kg, _, encoded = _encoded_kg(args)
    baselines = {
        "relation frequency (entity counts)": relation_frequency(kg),
        f"relation token prior (eq. 11, K={config.model.k})": relation_token_prior(
            kg, encoded.entity_tokens, encoded.entity_mask
        ),
    }
    for title, score in baselines.items():
        metrics = baseline_metrics(kg, score)
        print(title)
        for prefix in ("", "tail.", "head."):
            figures = "  ".join(f"{m} {metrics[prefix + m]:.4f}" for m in ("mrr", "hits@1", "hits@3", "hits@10"))
            print(f"  {prefix.rstrip('.') or 'all':<5} {figures}")


def _study_validate(args: argparse.Namespace) -> None:
    from kon_ray.overrides import parse_overrides
    from kon_ray.studies.study import check_study, load_study, trial_count

    study = load_study(args.study)
    configs = check_study(study, args.study, parse_overrides(args.overrides))
    varies = ", ".join(study.varied) or "nothing (replicates only)"
    print(f"{args.study}: study {study.name!r} OK: {trial_count(study)} trials, {len(configs)} configs built; varies {varies}")


def _study_run(args: argparse.Namespace) -> None:
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
    console.open_log(folder)
    overrides = parse_overrides(args.overrides)
    table = run_study(study, args.study, overrides, args.storage, args.address, args.resume, force=args.force)
    print(status_text(table, read_spec(folder)))
    print(f"results: {folder / study.name}.parquet")
    print(f"TensorBoard: tensorboard --logdir {folder}")


def _study_export(args: argparse.Namespace) -> None:
    from kon_ray.studies.folder import folder_of, read_spec
    from kon_ray.studies.table import export_table, study_table

    folder = folder_of(args.study, args.storage)
    spec = read_spec(folder)
    for path in export_table(study_table(folder), Path(args.out) if args.out else folder, spec.study):
        print(path)


def _study_status(args: argparse.Namespace) -> None:
    from kon_ray.studies.folder import folder_of, read_spec
    from kon_ray.studies.table import status_text, study_table

    folder = folder_of(args.study, args.storage)
    print(status_text(study_table(folder), read_spec(folder)))


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


def _config(args: argparse.Namespace) -> None:
    from kon_ray.settings import settings_markdown, settings_text

    sys.stdout.write(settings_markdown() if args.markdown else settings_text(args.section) + "\n")


def _user_errors() -> tuple[type[Exception], ...]:
    """ConfigError, and KGFormatError once the data layer is loaded (only it raises one): importing it
    up front would load torch into the commands that only read JSON."""
    lines = sys.modules.get("kon_ray.data.lines")
    return (ConfigError,) if lines is None else (ConfigError, lines.KGFormatError)


def _export(args: argparse.Namespace) -> None:
    from kon_ray.saved_run import export, load_run

    for path in export(load_run(args.run), Path(args.out)):
        print(path)


def _predict(args: argparse.Namespace) -> None:
    from kon_ray.data.queries import HEAD, TAIL
    from kon_ray.predict import answer_text, ask, read_queries, resolve
    from kon_ray.saved_run import load_run

    if args.queries:
        queries = read_queries(Path(args.queries))
    elif args.entity is not None and args.relation is not None:
        queries = [(args.entity, args.relation, HEAD if args.head else TAIL)]
    else:
        raise ConfigError("predict: give ENTITY and RELATION, or --queries FILE")
    s = load_run(args.run).setup
    for i, (entity, relation, direction) in enumerate(queries):
        anchor = resolve(entity, s.kg.entity_names, "entity")
        rel = resolve(relation, s.kg.relation_names, "relation")
        answers = ask(s, anchor, rel, direction, args.top)
        print(("\n" if i else "") + answer_text(s, anchor, rel, direction, answers, args.top))


def _evaluate(args: argparse.Namespace) -> None:
    from kon_ray.predict import per_relation
    from kon_ray.saved_run import load_run
    from kon_ray.training import evaluate

    s = load_run(args.run, args.overrides).setup
    limit = s.config.data.valid_limit if args.split == "valid" else s.config.data.test_limit
    metrics, table = evaluate(s, args.split, limit)
    relations = per_relation(table, s.kg.relation_names, s.config.eval.ties)
    width = min(40, max(12, *(len(name) for name in relations["relation"])))
    print(f"{args.split} split of {s.kg.name}, filtered, {s.config.eval.ties} ties")
    print(f"{'':<{width}}{'queries':>8}{'MRR':>8}{'H@1':>8}{'H@3':>8}{'H@10':>8}")
    for prefix in ("", "tail.", "head."):
        figures = "".join(f"{metrics[prefix + m]:>8.4f}" for m in ("mrr", "hits@1", "hits@3", "hits@10"))
        print(f"{prefix.rstrip('.') or 'all':<{width}}{int(metrics[prefix + 'queries']):>8}{figures}")
    print("per relation (both directions)")
    for row in relations.itertuples(index=False):
        figures = "".join(f"{v:>8.4f}" for v in row[2:])
        print(f"{row.relation[:width]:<{width}}{row.queries:>8}{figures}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kon-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="everything on the terminal: debug lines, Ray's output")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train K-ON and evaluate it (filtered ranking)")
    train.add_argument("overrides", nargs="*", help="dotted key=value settings, e.g. model.k=4 train.max_minutes=5")
    train.add_argument("--out", help="output folder (default: runs/train-<time>)")
    train.add_argument("--address", help="join this Ray cluster ('auto' on a cluster node); default: a local Ray")
    train.add_argument("--storage", help="Ray Train storage for checkpoints (default: OUT/ray; s3://... on a cluster)")
    train.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    train.add_argument("--no-ray", action="store_true", help="one worker in this process, for debugging")
    train.set_defaults(func=_train)

    config = commands.add_parser("config", help="every setting with its type, default, help and the paper's value")
    config.add_argument("section", nargs="?", help="a section (model, model.embedded, train, ...) or one key")
    config.add_argument("--markdown", action="store_true", help="all settings as docs/configuration.md")
    config.set_defaults(func=_config)

    data = commands.add_parser("data", help="inspect a KG").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser(
        "stats", help="counts, duplicates, leakage, shared names and first-K tokens, cuts at K and the anchor cap"
    )
    stats.add_argument("dataset", help="DB15K, MKG-W or a KG folder (formats: docs/data.md)")
    stats.add_argument("overrides", nargs="*", help="e.g. model.k=4 model.backbone=PATH")
    stats.set_defaults(func=_data_stats)
    baseline = data.add_parser("baseline", help="test metrics of ranking answers by what their relation alone says")
    baseline.add_argument("dataset", help="DB15K, MKG-W or a KG folder (formats: docs/data.md)")
    baseline.add_argument("overrides", nargs="*", help="e.g. model.k=4 model.embedded.vocab_size=8192")
    baseline.set_defaults(func=_data_baseline)

    study = commands.add_parser("study", help="run a study (grid, ablations, Optuna search) on Ray Tune")
    studies = study.add_subparsers(dest="study_command", required=True)
    storage_help = "folder holding each study's folder (default: runs/studies)"
    validate = studies.add_parser("validate", help="build every config of a study file without running it")
    validate.add_argument("study", help="a study file, e.g. studies/heads.py")
    validate.add_argument("overrides", nargs="*", help="dotted key=value settings on top of every trial")
    validate.set_defaults(func=_study_validate)
    run = studies.add_parser("run", help="run a study (or finish it, with --resume)")
    run.add_argument("study", help="a study file, e.g. studies/heads.py")
    run.add_argument("overrides", nargs="*", help="dotted key=value settings on top of every trial")
    run.add_argument("--address", help="join this Ray cluster ('auto' on a cluster node); default: a local Ray")
    run.add_argument("--storage", default="runs/studies", help=storage_help)
    run.add_argument("--resume", action="store_true", help="finish a study whose driver stopped; finished trials stay")
    run.add_argument("--force", action="store_true", help="with --resume: resume a changed study file")
    run.set_defaults(func=_study_run)
    export = studies.add_parser("export", help="write the result table as parquet and CSV")
    export.add_argument("study", help="a study file or a study folder")
    export.add_argument("--storage", default="runs/studies", help=storage_help)
    export.add_argument("--out", help="output folder (default: the study folder)")
    export.set_defaults(func=_study_export)
    status = studies.add_parser("status", help="trial counts and the best so far, from disk (also while it runs)")
    status.add_argument("study", help="a study file or a study folder")
    status.add_argument("--storage", default="runs/studies", help=storage_help)
    status.set_defaults(func=_study_status)

    report = commands.add_parser("report", help="one offline HTML report of studies, beside the paper's values")
    report.add_argument("studies", nargs="+", help="study files or study folders")
    report.add_argument("--storage", default="runs/studies", help=storage_help)
    report.add_argument("--out", help="HTML file (default: <storage>/report-<studies>.html)")
    report.set_defaults(func=_report)

    run_help = "a run folder (kon-ray train --out) or a study trial (<study folder>/<trial id>)"
    export = commands.add_parser("export", help="write a run's LoRA adapter (or whole model) and K-ON heads")
    export.add_argument("run", help=run_help)
    export.add_argument("--out", required=True, help="folder to write")
    export.set_defaults(func=_export)
    predict = commands.add_parser("predict", help="a trained run's top answers to (ENTITY, RELATION, ?)")
    predict.add_argument("run", help=run_help)
    predict.add_argument("entity", nargs="?", help="the given entity: its name, or its id as 12 or #12")
    predict.add_argument("relation", nargs="?", help="the relation: its name or id")
    predict.add_argument("--head", action="store_true", help="ask for the head: (?, RELATION, ENTITY)")
    predict.add_argument("--top", type=int, default=10, help="answers shown, and those tied with the last")
    predict.add_argument("--queries", help="a file of 'entity<TAB>relation[<TAB>head|tail]' lines")
    predict.set_defaults(func=_predict)
    evaluate = commands.add_parser("evaluate", help="re-rank a trained run without training")
    evaluate.add_argument("run", help=run_help)
    evaluate.add_argument("overrides", nargs="*", help="eval.* or data.*_limit, e.g. eval.ties=optimistic")
    evaluate.add_argument("--split", choices=("valid", "test"), default="test", help="the split to rank")
    evaluate.set_defaults(func=_evaluate)

    from kon_ray import bench  # a light import: each benchmark loads when it runs

    bench.add_arguments(commands.add_parser("bench", help=bench.HELP))
    return parser


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


if __name__ == "__main__":
    main()
