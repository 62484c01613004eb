"""Asking a trained run: the top answers of a query, and its metrics per direction and relation."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kon_ray.config import ConfigError
from kon_ray.data import KnowledgeGraph, Queries
from kon_ray.data.prompts import TEMPLATES, Batch
from kon_ray.data.queries import HEAD, TAIL
from kon_ray.evaluation import HITS_AT, summarize
from kon_ray.training.setup import Setup

INDEX = re.compile(r"#(\d+)")


@dataclass(frozen=True)
class Answer:
    entity: int
    rank: int
    """1 + the number of entities scored higher: tied answers share a rank."""
    score: float
    known: bool
    """A known answer of this query in training."""


def source_id(ids: Sequence[str], i: int) -> str:
    """The id of entity or relation ``i`` in the KG's files; ``#i`` for a KG built in code."""
    return ids[i] if ids else f"#{i}"


def resolve(text: str, names: Sequence[str], ids: Sequence[str], what: str) -> int:
    """The index of the entity or relation ``text`` stands for: the first of its name, its id in the
    KG's files, ``#`` and its index, and its name regardless of case that gives exactly one.

    A name that several share (none having it as its id), or one not found, is refused with their
    ids or the closest names and ids.
    """
    text = text.strip()
    named = [i for i, name in enumerate(names) if name == text]
    if len(named) == 1:
        return named[0]
    by_id = [i for i, key in enumerate(ids) if key == text]
    if len(by_id) == 1:
        return by_id[0]
    index = INDEX.fullmatch(text)
    if index is not None and int(index.group(1)) < len(names):
        return int(index.group(1))
    named = named or [i for i, name in enumerate(names) if name.casefold() == text.casefold()]
    if len(named) == 1:
        return named[0]
    shared = named or by_id
    if shared:
        keys = ", ".join(source_id(ids, i) for i in shared[:10])
        raise ConfigError(
            f"{what} {text!r} is ambiguous: {len(shared)} share it ({keys}); "
            f"give one's id, e.g. {source_id(ids, shared[0])!r}"
        )
    # names and ids alike, the first of those equal but for case
    folded = {key.casefold(): key for key in reversed([*names, *ids])}
    close = [folded[c] for c in difflib.get_close_matches(text.casefold(), list(folded), n=5, cutoff=0.5)]
    hint = f"closest: {', '.join(repr(c) for c in close)}" if close else "no name or id is close"
    index_hint = f"; an index is written '#{text}'" if text.isdigit() and int(text) < len(names) else ""
    raise ConfigError(f"no {what} named {text!r} among the {len(names)} of the KG; {hint}{index_hint}")


def labeller(names: Sequence[str], ids: Sequence[str]) -> Callable[[int], str]:
    """``label(i)``: the name of entity or relation ``i``, with its id when other names are the same."""
    repeated = Counter(names)
    return lambda i: f"{names[i]} ({source_id(ids, i)})" if repeated[names[i]] > 1 else names[i]


def prompt_batch(s: Setup, anchor: int, relation: int, direction: int) -> Batch:
    """The prompt of one query, as training wrote it, whether or not the KG holds the query."""
    text = TEMPLATES[s.config.data.prompt][direction].format(
        entity=s.kg.entity_names[anchor], relation=s.kg.relation_names[relation]
    )
    ids = torch.tensor([s.tokenizer(text, add_special_tokens=True)["input_ids"]])
    return Batch(input_ids=ids, attention_mask=torch.ones_like(ids), last=torch.tensor([ids.shape[1] - 1]))


@torch.no_grad()
def ask(s: Setup, anchor: int, relation: int, direction: int, top: int) -> list[Answer]:
    """The ``top`` best-scored entities of a query, and any tied with the last of them."""
    scores = s.model.scores_all(prompt_batch(s, anchor, relation, direction).to(s.device), s.entity_tokens,
                                s.entity_mask)[0].float().cpu()  # fmt: skip
    query = Queries(*(np.array([v], dtype=np.int64) for v in (anchor, relation, direction, 0)))
    known = s.train_index.mask(query)[0]
    order = torch.argsort(scores, descending=True, stable=True)
    cut = scores[order[min(top, len(order)) - 1]]
    shown = order[scores[order] >= cut]
    return [
        Answer(int(e), int((scores > scores[e]).sum()) + 1, float(scores[e]), bool(known[e])) for e in shown
    ]


def answer_text(
    kg: KnowledgeGraph, anchor: int, relation: int, direction: int, answers: list[Answer], top: int
) -> str:
    """The answers as a table; names that several entities share carry their ids."""
    label = labeller(kg.entity_names, kg.entity_ids)
    given, rel = label(anchor), labeller(kg.relation_names, kg.relation_ids)(relation)
    query = f"({given}, {rel}, ?)" if direction == TAIL else f"(?, {rel}, {given})"
    ties = f", {len(answers) - top} more tied with the last" if len(answers) > top else ""
    lines = [f"{query}  top {min(top, len(answers))} of {kg.num_entities} entities{ties}"]
    width = max(len(label(a.entity)) for a in answers)
    lines.append(f"{'rank':>5}  {'score':>9}  {'entity':<{width}}  in training")
    for a in answers:
        known = "known" if a.known else ""
        lines.append(f"{a.rank:>5}  {a.score:>9.4f}  {label(a.entity):<{width}}  {known}".rstrip())
    return "\n".join(lines)


def read_queries(path: Path) -> list[tuple[int, str, str, int]]:
    """(line number, entity, relation, direction) of ``entity<TAB>relation[<TAB>head|tail]`` lines
    (tail by default); blank lines and comments (``#`` lines without a tab: ``#12<TAB>...`` names
    entity 12) are skipped."""
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or (line.startswith("#") and "\t" not in line):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in ("head", "tail")):
            raise ConfigError(
                f"{path}, line {no}: expected 'entity<TAB>relation[<TAB>head|tail]', got {line!r}"
            )
        out.append((no, fields[0], fields[1], HEAD if len(fields) == 3 and fields[2] == "head" else TAIL))
    return out


def per_relation(table: pd.DataFrame, kg: KnowledgeGraph, ties: str) -> pd.DataFrame:
    """MRR and Hits@k of a rank table per relation, both directions together, most queries first;
    relation names that repeat carry their ids."""
    label = labeller(kg.relation_names, kg.relation_ids)
    rows = []
    for relation, part in table.groupby("relation"):
        metrics = summarize(part[ties].to_numpy(), part["direction"].to_numpy())
        rows.append({"relation": label(int(relation)), "queries": len(part), "mrr": metrics["mrr"],
                     **{f"hits@{k}": metrics[f"hits@{k}"] for k in HITS_AT}})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["queries", "relation"], ascending=[False, True], ignore_index=True)
