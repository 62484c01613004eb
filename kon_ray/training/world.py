"""This process's place among the data-parallel workers, and the collectives training needs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    size: int = 1

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (collective)."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def reduce(self, value: float, op: str) -> float:
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.item() / (self.size if op == "mean" else 1)

    def shard(self, n: int) -> np.ndarray:
        """Row indices of this rank; every rank gets the same count (padded by repeats, flagged -1)."""
        per_rank = math.ceil(n / self.size)
        index = np.arange(self.rank, per_rank * self.size, self.size)
        return np.where(index < n, index, -1)
