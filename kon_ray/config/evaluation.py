"""The ``eval`` section: filtered ranking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kon_ray.config.literals import check_literals
from kon_ray.overrides import check


@dataclass(frozen=True)
class EvalConfig:
    ties: Literal["realistic", "optimistic", "pessimistic"] = field(default="realistic", metadata={
        "help": "Tie handling of the headline rank; all three are always computed."})
    query_chunk: int = field(default=256, metadata={
        "help": "Queries scored against all entities at once: bounds memory to chunk x entities."})

    def __post_init__(self) -> None:
        check_literals(self)
        check(self.query_chunk >= 1, f"eval.query_chunk={self.query_chunk}: must be >= 1")
