"""A run seen while it trains: TensorBoard event files in ``<run>/tensorboard``, and on a Ray
driver one progress bar.

Both are fed the record of each validation (``fit``: step, progress, training losses, valid
metrics, queries/s), in this process (``run``) or from Ray Train's reports (``distributed.launch``).
``tensorboard --logdir <run>/tensorboard`` shows them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tqdm import tqdm

TENSORBOARD_DIR = "tensorboard"
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"


def scalar_tag(key: str) -> str:
    """A record key as a TensorBoard tag: 'valid.hits@10' -> 'valid/hits_10' (grouped by split)."""
    return re.sub(r"[^\w/.-]", "_", key).replace(".", "/", 1)


class Monitor:
    """Writes each validation record to TensorBoard and, with ``bar``, moves a bar of the run's
    budget (steps or time) showing its loss, valid MRR and queries/s."""

    def __init__(self, out: Path, bar: bool) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(out / TENSORBOARD_DIR))
        self.bar = tqdm(total=100, desc="train", bar_format=BAR_FORMAT) if bar else None

    def record(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(scalar_tag(key), value, step)
        self.writer.flush()
        if self.bar is not None:
            self.bar.n = round(100 * min(record["progress"], 1.0))
            self.bar.set_postfix({
                "step": step,
                "loss": f"{record['train.loss']:.3f}",
                "valid MRR": f"{record['valid.mrr']:.4f}",
                "qps": f"{record['queries_per_s']:.0f}",
            })  # fmt: skip

    def close(self) -> None:
        self.writer.close()
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
