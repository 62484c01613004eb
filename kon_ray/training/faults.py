"""Fault injection for resume tests, planned outside the code under test.

``$KON_RAY_FAULTS`` names a JSON file, ``{"crash_after_step": n, "marker": path}``: the first
process to pass a checkpoint at step >= n while ``marker`` does not exist creates it and
crashes. Ray's processes inherit the variable (``start_ray`` passes it in the runtime
environment), so a test reaches Ray Train workers and Tune trials by writing the file.
Unset, or naming no file, nothing happens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAULTS_ENV = "KON_RAY_FAULTS"


def after_checkpoint(step: int) -> None:
    plan_file = os.environ.get(FAULTS_ENV)
    if not plan_file or not os.path.isfile(plan_file):
        return
    plan = json.loads(Path(plan_file).read_text())
    marker = Path(plan["marker"])
    if step >= plan["crash_after_step"] and not marker.exists():
        marker.touch()
        raise RuntimeError(f"injected crash after step {step}")
