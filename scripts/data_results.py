"""Regenerate results/data-stats.csv and results/baselines.csv from `kon-ray data stats` and
`kon-ray data baseline` on the shipped KGs, each row naming its command and the commit.

    python scripts/data_results.py
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import subprocess
from pathlib import Path

from kon_ray.cli import main

ROOT = Path(__file__).parents[1]
DATASETS = ("DB15K", "MKG-W")


def printed(*argv: str) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(list(argv))
    return out.getvalue().splitlines()


def write(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    print(f"wrote {path.relative_to(ROOT)} ({len(rows)} rows)")


def run() -> None:
    commit = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    stats, baselines = [], []
    for dataset in DATASETS:
        command = f"kon-ray data stats {dataset}"
        for line in printed("data", "stats", dataset):
            name, value = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            if name != "dataset":
                stats.append([dataset, name, value, commit, command])
        command, title = f"kon-ray data baseline {dataset}", ""
        for line in printed("data", "baseline", dataset):
            if not line.startswith(" "):
                title = re.sub(r" \(entity counts\)| \(eq\. 11, (K=\d+)\)", lambda m: f", {m.group(1)}" if m.group(1) else "", line)
                continue
            direction, *figures = line.split()
            values = dict(zip(figures[::2], figures[1::2], strict=True))
            baselines.append([dataset, title, direction, *(values[m] for m in ("mrr", "hits@1", "hits@3", "hits@10")),
                              commit, command])  # fmt: skip
    write(ROOT / "results" / "data-stats.csv", ["dataset", "statistic", "value", "measured_at", "command"], stats)
    header = ["dataset", "baseline", "direction", "mrr", "hits@1", "hits@3", "hits@10", "measured_at", "command"]
    write(ROOT / "results" / "baselines.csv", header, baselines)


if __name__ == "__main__":
    run()
