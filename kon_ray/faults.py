"""Fault injection for resume tests, planned outside the code under test.

``$KON_RAY_FAULTS`` names a JSON file holding one fault and a ``marker`` path; the first process
to reach the fault while ``marker`` does not exist creates it, so each fault happens once:

- ``{"crash_after_step": n}``: crash after a checkpoint at step >= n;
- ``{"stall_before_final_report_s": s}``: a study trial whose run holds its final result sleeps
  ``s`` seconds before reporting it to Tune (a driver killed meanwhile never saved it).

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
    plan = _plan("crash_after_step")
    if plan is not None and step >= plan["crash_after_step"] and _first(plan):
        raise RuntimeError(f"injected crash after step {step}")


def before_final_report() -> None:
    plan = _plan("stall_before_final_report_s")
    if plan is not None and _first(plan):
        time.sleep(plan["stall_before_final_report_s"])


def _plan(fault: str) -> dict[str, Any] | None:
    plan_file = os.environ.get(FAULTS_ENV)
    if not plan_file or not os.path.isfile(plan_file):
        return None
    plan = json.loads(Path(plan_file).read_text())
    return plan if fault in plan else None


def _first(plan: dict[str, Any]) -> bool:
    marker = Path(plan["marker"])
    if marker.exists():
        return False
    marker.touch()
    return True
