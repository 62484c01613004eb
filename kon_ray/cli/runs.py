"""``kon-ray train``, and the commands on a trained run: ``evaluate``, ``export`` and ``predict``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from kon_ray import console
from kon_ray.config import ConfigError, RunConfig, apply_overrides


def train(args: argparse.Namespace) -> None:
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


def evaluate(args: argparse.Namespace) -> None:
    from kon_ray.predict import per_relation
    from kon_ray.saved_run import load_run
    from kon_ray.training import evaluate

    s = load_run(args.run, args.overrides).setup
    limits = {"train": None, "valid": s.config.data.valid_limit, "test": s.config.data.test_limit}
    limit = limits[args.split] if args.limit is None else args.limit
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1")
    metrics, table = evaluate(s, args.split, limit)
    relations = per_relation(table, s.kg, s.config.eval.ties)
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


def export(args: argparse.Namespace) -> None:
    from kon_ray.saved_run import export, load_run

    for path in export(load_run(args.run), Path(args.out)):
        print(path)


def predict(args: argparse.Namespace) -> None:
    """Each query's answers; with --queries, a query naming no entity or relation (or several) gets
    its closest matches on stderr and the others are still asked."""
    from kon_ray.data.queries import HEAD, TAIL
    from kon_ray.predict import answer_text, ask, read_queries, resolve
    from kon_ray.saved_run import load_run

    if args.queries:
        queries = read_queries(Path(args.queries))
    elif args.entity is not None and args.relation is not None:
        queries = [(0, args.entity, args.relation, HEAD if args.head else TAIL)]  # line 0: no file
    else:
        raise ConfigError("predict: give ENTITY and RELATION, or --queries FILE")
    s = load_run(args.run).setup
    failed, shown = 0, 0
    for no, entity, relation, direction in queries:
        try:
            anchor = resolve(entity, s.kg.entity_names, s.kg.entity_ids, "entity")
            rel = resolve(relation, s.kg.relation_names, s.kg.relation_ids, "relation")
        except ConfigError as error:
            if not args.queries:
                raise
            print(f"kon-ray: error: {args.queries}, line {no}: {error}", file=sys.stderr)
            failed += 1
            continue
        answers = ask(s, anchor, rel, direction, args.top)
        print(("\n" if shown else "") + answer_text(s.kg, anchor, rel, direction, answers, args.top))
        shown += 1
    if failed:
        raise ConfigError(f"{args.queries}: {failed} of {len(queries)} queries not asked (above)")
