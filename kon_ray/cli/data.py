"""``kon-ray data stats`` and ``kon-ray data baseline``: a KG inspected without training."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from kon_ray.config import RunConfig, apply_overrides

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kon_ray.data import KnowledgeGraph
    from kon_ray.data.prompts import EncodedKG


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


def stats(args: argparse.Namespace) -> None:
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


def baseline(args: argparse.Namespace) -> None:
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
