"""The ``kon-ray`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.data import KGFormatError

log = logging.getLogger("kon_ray")


def _train(args: argparse.Namespace) -> None:
    config = apply_overrides(RunConfig(), args.overrides)
    out = Path(args.out or f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.no_ray:
        if config.train.workers != 1:
            raise ConfigError(f"train.workers={config.train.workers}: --no-ray runs exactly one worker")
        from kon_ray.training import run

        metrics = run(config, out)
    else:
        from kon_ray.distributed import launch

        metrics = launch(config, out, args.address, args.storage, max_failures=args.max_failures)
    print(
        f"test MRR {metrics['test.mrr']:.4f}  Hits@1 {metrics['test.hits@1']:.4f}  "
        f"Hits@3 {metrics['test.hits@3']:.4f}  Hits@10 {metrics['test.hits@10']:.4f}  "
        f"(valid MRR {metrics.get('valid.mrr', float('nan')):.4f}, "
        f"{metrics['train_time_s'] / 60:.1f} min training, {metrics['wall_time_s'] / 60:.1f} min in all)"
    )
    print(f"results: {out / 'metrics.json'}")


def _data_stats(args: argparse.Namespace) -> None:
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data import load_kg
    from kon_ray.data.prompts import encode_kg

    config = apply_overrides(RunConfig(), [f"data.dataset={args.dataset}", *args.overrides])
    kg = load_kg(config.data.dataset)
    k = config.model.k
    tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
    encoded = encode_kg(kg, tokenizer, config.data.prompt, k)
    lengths = encoded.name_lengths
    rows = [
        ("dataset", kg.name),
        ("entities", kg.num_entities),
        ("relations", kg.num_relations),
        ("train", len(kg.train)),
        ("valid", len(kg.valid)),
        ("test", len(kg.test)),
        ("tokenizer", f"{config.model.backbone} ({len(tokenizer)} tokens)"),
        ("name tokens (mean / max)", f"{lengths.mean():.2f} / {lengths.max()}"),
        (f"names truncated at K={k}", f"{int((lengths > k).sum())} ({(lengths > k).mean():.2%})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kon-ray", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train K-ON and evaluate it (filtered ranking)")
    train.add_argument("overrides", nargs="*", help="dotted key=value settings, e.g. model.k=4 train.max_minutes=5")
    train.add_argument("--out", help="output folder (default: runs/train-<time>)")
    train.add_argument("--address", help="join this Ray cluster ('auto' on a cluster node); default: a local Ray")
    train.add_argument("--storage", help="Ray Train storage for checkpoints (default: OUT/ray; s3://... on a cluster)")
    train.add_argument("--max-failures", type=int, default=1, help="worker-group restarts from the last checkpoint")
    train.add_argument("--no-ray", action="store_true", help="one worker in this process, for debugging")
    train.set_defaults(func=_train)

    data = commands.add_parser("data", help="inspect a KG").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="counts, and entity names truncated at K for a tokenizer")
    stats.add_argument("dataset", help="DB15K, MKG-W or a folder with train/valid/test.tsv")
    stats.add_argument("overrides", nargs="*", help="e.g. model.k=4 model.backbone=PATH")
    stats.set_defaults(func=_data_stats)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.func(args)
    except (ConfigError, KGFormatError) as error:
        print(f"kon-ray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
