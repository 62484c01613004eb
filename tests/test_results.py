"""Result files: written atomically, readable as the umask allows."""

import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from kon_ray.evaluation import write_rank_table
from kon_ray.results import write_atomic, write_json


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request: pytest.FixtureRequest):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_result_files_take_the_umask(tmp_path: Path, umask: int) -> None:
    from kon_ray.studies.table import export_table

    table = pd.DataFrame({"trial_id": ["a"], "valid.mrr": [0.1]})
    write_json(tmp_path / "metrics.json", {"a": 1})
    write_atomic(tmp_path / "report.html", b"<html></html>")
    write_rank_table(table, tmp_path / "ranks.parquet")
    paths = [tmp_path / "metrics.json", tmp_path / "report.html", tmp_path / "ranks.parquet"]
    paths += export_table(table, tmp_path, "study")
    assert {p.name: mode(p) for p in paths} == {p.name: 0o666 & ~umask for p in paths}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "metrics.json"
    write_json(path, {"old": 1})

    def fail(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"new": 2})
    assert path.read_text() == '{\n  "old": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
