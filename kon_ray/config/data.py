"""The ``data`` section: the KG, its prompt and how much of each split is used."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kon_ray.config.literals import check_literals
from kon_ray.overrides import check


@dataclass(frozen=True)
class DataConfig:
    dataset: str = field(default="DB15K", metadata={
        "help": "'DB15K', 'MKG-W' (shipped) or the path of a folder with train/valid/test.tsv."})
    prompt: Literal["compact", "instruction"] = field(default="compact", metadata={
        "help": "'instruction': the published code's natural-language instruction (for chat LLMs); "
                "'compact': 'head | relation | ?' markers, shorter for the small embedded backbone.",
        "paper": "instruction"})
    train_limit: int | None = field(default=None, metadata={
        "help": "Use only the first N training triples (a KG slice for quick trials and tests); None: all."})
    valid_limit: int | None = field(default=2000, metadata={
        "help": "Validate on at most N valid triples per evaluation (both directions); None: all.",
        "paper": None})
    valid_unseen: bool = field(default=True, metadata={
        "help": "Validate only on valid triples that are not also training triples, so that the checkpoint "
                "is not selected on recall of training data; False: the valid split as given.",
        "paper": False})
    test_limit: int | None = field(default=None, metadata={
        "help": "Test on at most N test triples (both directions); None: all, as the paper does."})
    anchor_tokens: int | None = field(default=48, metadata={
        "help": "Tokens of the query entity's name kept in the prompt (its first N; the answer side is cut at "
                "model.k), so a KG of long names does not pay for its longest prompt; None: all."})

    def __post_init__(self) -> None:
        check_literals(self)
        check(bool(self.dataset), "data.dataset='': name a shipped KG (DB15K, MKG-W) or a folder")
        for name in ("train_limit", "valid_limit", "test_limit", "anchor_tokens"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"data.{name}={value}: must be >= 1 or None")
