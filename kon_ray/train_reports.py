"""Ray Train's validation reports, seen by the driver while the run trains.

Ray Train calls its callbacks in the controller, an actor: ``ReportsToQueue`` puts each report
on a Ray queue, and ``reports_to`` reads that queue on a thread of the driver. Imported only
once Ray runs (importing Ray reads its loopback switch).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from ray.train import UserCallback
from ray.util.queue import Empty, Queue


class ReportsToQueue(UserCallback):
    """Puts rank 0's validation reports on ``queue``; a run's final report is not one."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics[0].get("final"):
            self.queue.put(metrics[0])


@contextlib.contextmanager
def reports_to(on_report: Callable[[dict[str, Any]], None]) -> Iterator[ReportsToQueue]:
    """The callback to give a ``TorchTrainer``; ``on_report`` gets each report on this driver
    until the block ends (then the reports still queued)."""
    queue = Queue(actor_options={"num_cpus": 0})  # an actor asking for no CPU a worker could use
    done = threading.Event()

    def read() -> None:
        while not done.is_set() or not queue.empty():
            with contextlib.suppress(Empty):
                on_report(queue.get(timeout=0.5))

    reader = threading.Thread(target=read, name="kon-ray-reports", daemon=True)
    reader.start()
    try:
        yield ReportsToQueue(queue)
    finally:
        done.set()
        reader.join()
        queue.shutdown()
