"""Fault injection for resume tests, planned outside the code under test.

``$KON_RAY_FAULTS`` names a JSON file, ``{"fault": name, "step": n, "seconds": s, "marker": path}``;
the first process to reach the fault while ``marker`` does not exist writes its pid there, so each
fault happens once:

- ``crash_after_step``: crash after a checkpoint at step >= n;
- ``stall_after_step``: sleep ``s`` seconds after a checkpoint at step >= n (a test takes the
  process's node away meanwhile);
- ``stall_before_final_report``: a study trial whose run holds its final result sleeps ``s``
  seconds before reporting it to Tune (a driver killed meanwhile never saved it).

Ray's processes inherit the variable (``start_ray`` passes it in the runtime environment), so a
test reaches Ray Train workers and Tune trials by writing the file. Unset, or naming no file,
nothing happens.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

FAULTS_ENV = "KON_RAY_FAULTS"


def after_checkpoint(step: int) -> None:
    plan = _plan("crash_after_step", "stall_after_step")
    if plan is None or step < plan["step"] or not _first(plan):
        return
    if plan["fault"] == "crash_after_step":
        raise RuntimeError(f"injected crash after step {step}")
    time.sleep(plan["seconds"])


def before_final_report() -> None:
    plan = _plan("stall_before_final_report")
    if plan is not None and _first(plan):
        time.sleep(plan["seconds"])


def _plan(*faults: str) -> dict[str, Any] | None:
    plan_file = os.environ.get(FAULTS_ENV)
    if not plan_file or not os.path.isfile(plan_file):
        return None
    plan = json.loads(Path(plan_file).read_text())
    return plan if plan["fault"] in faults else None


def _first(plan: dict[str, Any]) -> bool:
    marker = Path(plan["marker"])
    try:
        with marker.open("x") as f:  # one process wins, however many reach the fault at once
            f.write(str(os.getpid()))
    except FileExistsError:
        return False
    return True
