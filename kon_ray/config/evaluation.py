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
    chunk_mb: int | None = field(default=None, metadata={
        "help": "Memory for one chunk's (chunk x entities) tensors, about 16 bytes an entry: the chunk is "
        "then at most chunk_mb MiB / (16 x entities) queries, for KGs of millions of entities; "
        "none: eval.query_chunk alone."})

    def __post_init__(self) -> None:
        check_literals(self)
        check(self.query_chunk >= 1, f"eval.query_chunk={self.query_chunk}: must be >= 1")
        check(self.chunk_mb is None or self.chunk_mb >= 1, f"eval.chunk_mb={self.chunk_mb}: must be >= 1 or none")

    def chunk(self, entities: int) -> int:
        """Queries a ranking chunk holds against ``entities`` entities."""
        if self.chunk_mb is None:
            return self.query_chunk
        return max(1, min(self.query_chunk, self.chunk_mb * 2**20 // (16 * entities)))
