"""Asking a trained run: the top answers of a query, and its metrics per direction and relation."""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kon_ray.config import ConfigError
from kon_ray.data import Queries
from kon_ray.data.prompts import TEMPLATES, Batch
from kon_ray.data.queries import HEAD, TAIL
from kon_ray.evaluation import HITS_AT, summarize
from kon_ray.training.setup import Setup

ID = re.compile(r"#?(\d+)")


@dataclass(frozen=True)
class Answer:
    entity: int
    rank: int
    """1 + the number of entities scored higher: tied answers share a rank."""
    score: float
    known: bool
    """A known answer of this query in training."""


def resolve(text: str, names: Sequence[str], what: str) -> int:
    """The id of the entity or relation ``text`` names: its name, or its id as ``12`` or ``#12``.

    A name several share, or one not found, is refused with their ids or the closest names.
    """
    matches = [i for i, name in enumerate(names) if name == text]
    if not matches:
        number = ID.fullmatch(text.strip())
        if number is not None and int(number.group(1)) < len(names):
            return int(number.group(1))
        matches = [i for i, name in enumerate(names) if name.casefold() == text.strip().casefold()]
    if len(matches) == 1:
        return matches[0]
    if matches:
        ids = ", ".join(f"#{i}" for i in matches[:10])
        raise ConfigError(
            f"{what} {text!r} is ambiguous: {len(matches)} share that name ({ids}); "
            f"give one id, e.g. '#{matches[0]}'"
        )
    folded = {name.casefold(): name for name in reversed(names)}  # the first of names equal but for case
    close = [folded[c] for c in difflib.get_close_matches(text.casefold(), list(folded), n=5, cutoff=0.5)]
    hint = f"closest: {', '.join(repr(c) for c in close)}" if close else "no name is close"
    raise ConfigError(f"no {what} named {text!r} among the {len(names)} of the KG; {hint}")


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


def answer_text(s: Setup, anchor: int, relation: int, direction: int, answers: list[Answer], top: int) -> str:
    """The answers as a table; names that several entities share carry their ids."""
    names = s.kg.entity_names
    repeated = Counter(names)

    def label(e: int) -> str:
        return f"{names[e]} (#{e})" if repeated[names[e]] > 1 else names[e]

    given, rel = label(anchor), s.kg.relation_names[relation]
    query = f"({given}, {rel}, ?)" if direction == TAIL else f"(?, {rel}, {given})"
    ties = f", {len(answers) - top} more tied with the last" if len(answers) > top else ""
    lines = [f"{query}  top {min(top, len(answers))} of {s.kg.num_entities} entities{ties}"]
    width = max(len(label(a.entity)) for a in answers)
    lines.append(f"{'rank':>5}  {'score':>9}  {'entity':<{width}}  in training")
    for a in answers:
        known = "known" if a.known else ""
        lines.append(f"{a.rank:>5}  {a.score:>9.4f}  {label(a.entity):<{width}}  {known}".rstrip())
    return "\n".join(lines)


def read_queries(path: Path) -> list[tuple[str, str, int]]:
    """``entity<TAB>relation[<TAB>head|tail]`` lines (tail by default); blank lines and comments
    (``#`` lines without a tab: ``#12<TAB>...`` names entity 12) are skipped."""
    out = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or (line.startswith("#") and "\t" not in line):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) not in (2, 3) or (len(fields) == 3 and fields[2] not in ("head", "tail")):
            raise ConfigError(
                f"{path}, line {no}: expected 'entity<TAB>relation[<TAB>head|tail]', got {line!r}"
            )
        out.append((fields[0], fields[1], HEAD if len(fields) == 3 and fields[2] == "head" else TAIL))
    return out


def per_relation(table: pd.DataFrame, relation_names: Sequence[str], ties: str) -> pd.DataFrame:
    """MRR and Hits@k of a rank table per relation, both directions together, most queries first."""
    rows = []
    for relation, part in table.groupby("relation"):
        metrics = summarize(part[ties].to_numpy(), part["direction"].to_numpy())
        rows.append({"relation": relation_names[int(relation)], "queries": len(part), "mrr": metrics["mrr"],
                     **{f"hits@{k}": metrics[f"hits@{k}"] for k in HITS_AT}})  # fmt: skip
    return pd.DataFrame(rows).sort_values(["queries", "relation"], ascending=[False, True], ignore_index=True)
