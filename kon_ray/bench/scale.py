"""Time and peak memory of every stage on seeded synthetic KGs of 10k to 1M entities, and their growth.

Each KG has names of realistic token lengths (1-6 pseudo-words of 1-3 syllables), a heavy-tailed
(Zipf) degree distribution, a few hundred Zipf-distributed relations and about 5 training triples
per entity, as in Wikidata5M; it is written once in the TSV layout with ids and names. Each stage
runs in a fresh process, which reports its wall time, the process's peak resident memory (the
total, with what the stage loads first) and the stage's own increment (its peak above the
resident memory just before it; ``measure``): load + tokenise cold (empty cache: the BPE tokenizer
is trained and every prompt tokenised) and cached, the negatives of one default step, one default
training step, and the filtered ranking of ``ranked`` test queries against every entity in chunks
derived from ``rank_budget_mb``. The growth exponent of a stage is log(x(1M) / x(100k)) / log(10),
of its time, of its peak above a process that only imports the same libraries and of its increment
(each taken as at least 10 ms and 16 MB, below which a difference is noise).
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kon_ray.bench.common import Check, Report, announce, hardware, show
from kon_ray.config import RunConfig, apply_overrides

BASE: dict[str, str] = {}
PEAK_GB = 8.0
EXPONENT = 1.1
SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"] + ["an", "el", "or", "um", "is"]
STAGES = ("imports", "load+tokenise cold", "load+tokenise cached", "negatives", "training step", "ranking")

Figures = dict[str, dict[str, dict[str, float]]]
"""size -> stage -> ``measure``'s figures (and stage-specific counts)."""


@dataclass(frozen=True)
class Settings:
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    """Entity counts; the growth exponent is taken between the last two."""
    triples_per_entity: float = 5.0
    relations: int = 300
    held_out: int = 1000
    """Valid and test triples each."""
    ranked: int = 1000
    """Test queries ranked against every entity (the first of both directions of the test split)."""
    rank_budget_mb: int = 1024
    """``eval.chunk_mb`` of the ranking stage: chunk = budget / (16 bytes x entities), at most eval.query_chunk."""
    seed: int = 0
    folder: str = "runs/bench/scale"
    """Where the synthetic KGs (reused when present) and each size's preprocessing cache are written."""


def write_synthetic_kg(folder: Path, entities: int, settings: Settings) -> Path:
    """A seeded KG in the TSV layout with ids and names (``entities.tsv``, ``relations.tsv``)."""
    if (folder / "test.tsv").is_file():
        return folder
    rng = np.random.default_rng(settings.seed)
    words = ["".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(max(1000, entities // 20))]
    word_weights = _zipf(len(words), 1.0)
    lengths = np.minimum(1 + rng.geometric(0.55, entities), 6)
    picks = iter(rng.choice(len(words), int(lengths.sum()), p=word_weights).tolist())
    names = [" ".join(words[next(picks)] for _ in range(n)).title() for n in lengths.tolist()]
    total = int(settings.triples_per_entity * entities) + 2 * settings.held_out
    popular = rng.permutation(entities)  # degree rank -> entity
    heads = popular[_zipf_draws(rng, entities, total, 0.8)]
    heads[:entities] = rng.permutation(entities)  # every entity in at least one triple
    tails = popular[_zipf_draws(rng, entities, total, 0.8)]
    relations = rng.choice(settings.relations, total, p=_zipf(settings.relations, 1.0))
    triples = np.unique(np.stack([heads, relations, tails], axis=1), axis=0)
    triples = triples[rng.permutation(len(triples))]
    held = 2 * settings.held_out
    splits = {"valid": triples[:held:2], "test": triples[1:held:2], "train": triples[held:]}
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "entities.tsv").write_text("".join(f"Q{e}\t{n}\n" for e, n in enumerate(names)))
    relation_names = (" ".join(rng.choice(words, 2)).lower() for _ in range(settings.relations))
    (tmp / "relations.tsv").write_text("".join(f"P{r}\t{n}\n" for r, n in enumerate(relation_names)))
    for split, rows in splits.items():
        (tmp / f"{split}.tsv").write_text("".join(f"Q{h}\tP{r}\tQ{t}\n" for h, r, t in rows.tolist()))
    os.replace(tmp, folder)
    return folder


def _zipf(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    return weights / weights.sum()


def _zipf_draws(rng: np.random.Generator, n: int, size: int, exponent: float) -> np.ndarray:
    """Degree ranks in [0, n) with P(rank) proportional to (rank + 1) ** -exponent (inverse CDF)."""
    cdf = np.cumsum(_zipf(n, exponent))
    return np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak resident memory since the process started or its peak was reset) or ``VmRSS``
    (resident now) of this process, in MB; not getrusage's ru_maxrss, which keeps the parent's
    resident size at the fork before the child's exec and cannot be reset."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise OSError(f"/proc/self/status has no {field}")


def measure(work: Callable[[], dict[str, float] | None]) -> dict[str, float]:
    """``work``'s seconds and memory (Linux), with what it returns:

    ``before_mb``: the process's peak before it; ``resident_mb``: its resident memory just before it,
    once freed memory is returned to the system (so reusing it counts); ``increment_mb``: the peak
    during ``work`` above ``resident_mb``; ``peak_mb``: the process's peak after it (the total).
    """
    before = _status_mb("VmHWM")
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's: freed heap pages go back
    if trim is not None:
        trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak restarts from the resident size
    resident = _status_mb("VmRSS")
    start = time.perf_counter()
    counts = work() or {}
    seconds = time.perf_counter() - start
    during = _status_mb("VmHWM")
    return {"seconds": seconds, "before_mb": before, "resident_mb": resident, "increment_mb": during - resident,
            "peak_mb": max(before, during), **counts}  # fmt: skip


def _setup(config: RunConfig) -> Any:
    from kon_ray.bench.common import load

    return load(config, torch.device("cpu"))


def _stage(stage: str, config_dict: dict[str, Any], settings: Settings, cache: str) -> dict[str, float]:
    """One stage in this (fresh) process: ``measure``'s figures of its work, after what it loads first."""
    os.environ["KON_RAY_CACHE"] = cache
    config = RunConfig.from_dict(config_dict)
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data import AnswerIndex, both_directions, load_kg, sample_negatives
    from kon_ray.data.prompts import encode_kg
    from kon_ray.evaluation import rank_queries
    from kon_ray.training import setup  # noqa: F401  (imports as a training process does)

    if stage == "imports":
        return measure(lambda: None)
    if stage.startswith("load+tokenise"):

        def load_and_tokenise() -> dict[str, float]:
            kg = load_kg(config.data.dataset)
            tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
            encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k, config.data.anchor_tokens)
            return {"prompts": float(len(encoded.prompt_keys))}

        return measure(load_and_tokenise)
    if stage == "negatives":
        kg = load_kg(config.data.dataset)
        index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
        queries = both_directions(kg.train)
        batch = queries.take(np.random.default_rng(0).permutation(len(queries))[: config.train.global_batch])

        def negatives() -> None:
            for micro in range(config.train.grad_accum):
                part = batch.take(slice(micro * config.train.micro_batch, (micro + 1) * config.train.micro_batch))
                sample_negatives(index, part, config.loss.negatives, torch.Generator().manual_seed(micro))

        return measure(negatives)
    s = _setup(config)
    if stage == "training step":
        from kon_ray.bench.common import engine_for, train_batch, train_step

        engine = engine_for(s)
        queries = train_batch(s, config.train.seed)
        train_step(s, engine, queries, config.loss.negatives, 0)  # warm-up: first-call allocations

        def step() -> None:
            train_step(s, engine, queries, config.loss.negatives, 1)

        return measure(step)
    chunk = replace(config.eval, chunk_mb=settings.rank_budget_mb).chunk(s.kg.num_entities)
    queries = both_directions(s.kg.test).take(slice(0, settings.ranked))
    s.model.eval()

    def score(part: Any) -> torch.Tensor:
        batch = s.encoded.batch(part, with_targets=False).to(s.device)
        return s.model.scores_all(batch, s.entity_tokens, s.entity_mask).float()

    def ranking() -> dict[str, float]:
        rank_queries(score, queries, s.filter_index, chunk)
        return {"chunk": float(chunk), "queries": float(len(queries))}

    return measure(ranking)


def _fresh(stage: str, config: RunConfig, settings: Settings, cache: Path) -> dict[str, float]:
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_stage, stage, config.to_dict(), settings, str(cache)).result()


def _exponent(small: float, large: float, ratio: float, floor: float) -> float:
    """log(large / small) / log(ratio), each taken as at least ``floor`` (below it is noise)."""
    return math.log(max(large, floor) / max(small, floor)) / math.log(ratio)


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    root = Path(settings.folder)
    setup = announce({
        "sizes": list(settings.sizes), "triples per entity": settings.triples_per_entity,
        "relations": settings.relations, "ranked queries": settings.ranked, "|N|": config.loss.negatives,
        "batch": f"{config.train.global_batch} queries", **hardware(torch.device("cpu")),
    })  # fmt: skip
    figures: Figures = {}
    for size in settings.sizes:
        start = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # its memory returns at exit
            target = root / f"kg-{size}-seed{settings.seed}"
            folder = pool.submit(write_synthetic_kg, target, size, settings).result()
        show(f"{size:>9,} entities: KG in {folder} ({time.perf_counter() - start:.0f} s)")
        sized = apply_overrides(config, {"data.dataset": str(folder)})
        cache = root / f"cache-{size}"
        if cache.exists():
            import shutil

            shutil.rmtree(cache)  # the cold stage starts from an empty cache
        figures[str(size)] = {}
        for stage in STAGES:
            result = _fresh(stage, sized, settings, cache)
            figures[str(size)][stage] = result
            show(f"{size:>9,} {stage:<21} {result['seconds']:8.2f} s  peak {result['peak_mb'] / 1024:6.2f} GB"
                 f"  increment {result['increment_mb']:7,.0f} MB"
                 f"  (resident before the stage {result['resident_mb'] / 1024:.2f} GB)")  # fmt: skip
    checks = _checks(settings, figures)
    exponents = _exponents(settings, figures)
    return Report(setup=setup, figures={"stages": figures, "exponents": exponents}, checks=checks)


def _exponents(settings: Settings, figures: Figures) -> dict[str, dict[str, float]]:
    if len(settings.sizes) < 2:
        return {}
    small, large = (figures[str(n)] for n in settings.sizes[-2:])
    ratio = settings.sizes[-1] / settings.sizes[-2]
    out = {}
    for stage in [name for name in STAGES[1:] if name in small]:
        above = [sized[stage]["peak_mb"] - sized["imports"]["peak_mb"] for sized in (small, large)]
        out[stage] = {
            "time": _exponent(small[stage]["seconds"], large[stage]["seconds"], ratio, 0.01),
            "peak above imports": _exponent(*above, ratio, 16.0),
            "increment": _exponent(small[stage]["increment_mb"], large[stage]["increment_mb"], ratio, 16.0),
        }
    return out


def _checks(settings: Settings, figures: Figures) -> list[Check]:
    largest = str(settings.sizes[-1])
    checks = [
        Check(f"peak of the largest stage at {int(largest):,} entities",
              max(r["peak_mb"] for r in figures[largest].values()) / 1024, "<=", PEAK_GB, " GB"),
    ]  # fmt: skip
    for stage, grown in _exponents(settings, figures).items():
        checks.append(Check(f"{stage}: peak growth exponent", grown["peak above imports"], "<=", EXPONENT))
        checks.append(Check(f"{stage}: increment growth exponent", grown["increment"], "<=", EXPONENT))
        checks.append(Check(f"{stage}: time growth exponent", grown["time"], "<=", EXPONENT))
    return checks

