"""The kon-ray command line: data stats, train, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kon_ray.cli import main
from kon_ray.config import flatten
from tests.conftest import read_scalars, tiny_config


def stats_rows(out: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in out.strip().splitlines())


def test_data_stats_counts_and_truncation(tiny_kg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "stats", str(tiny_kg), "model.k=2", "model.embedded.vocab_size=400"])
    rows = stats_rows(capsys.readouterr().out)
    assert (rows["entities"], rows["relations"], rows["train"]) == ("51", "3", "144")
    assert rows["valid triples also in train"] == "40 (100%)"
    truncated = int(rows["names truncated at K=2"].split()[0])
    assert 0 < truncated <= 51  # three-syllable names need more than two tokens of a 320-token BPE


def test_data_stats_on_db15k(capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "stats", "DB15K", "model.k=8"])
    out = capsys.readouterr().out
    for expected in ("12842", "279", "79222", "9904", "9902", "names truncated at K=8"):
        assert expected in out


def test_bad_override_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--no-ray", "model.k=0"])
    assert exit_info.value.code == 2
    assert "model.k=0: the number of K-ON heads must be >= 1" in capsys.readouterr().err


def test_bad_dataset_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.tsv").write_text("a\tr\tb\n")
    (tmp_path / "valid.tsv").write_text("a,r,b\n")
    (tmp_path / "test.tsv").write_text("a\tr\tb\n")
    with pytest.raises(SystemExit):
        main(["data", "stats", str(tmp_path)])
    err = capsys.readouterr().err
    assert "valid.tsv" in err and "line 1" in err


def test_train_without_ray_writes_metrics(tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tiny_config(tiny_kg, "train.max_steps=3").to_dict()
    overrides = [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in flatten(config) if v is not None]
    main(["train", "--no-ray", *overrides, "train.evals_per_epoch=9", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "test MRR" in out and f"tensorboard --logdir {tmp_path / 'tensorboard'}" in out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 3
    assert f"log: {tmp_path / 'console.log'}" in err and "valid MRR=" in err  # on fit's bar
    assert "step 3: valid MRR" not in err and "step 3: valid MRR" in (tmp_path / "console.log").read_text()
    scalars = read_scalars(tmp_path / "tensorboard")
    assert [step for step, _ in scalars["valid/mrr"]] == [r["step"] for r in metrics["history"]]
    assert scalars["train/loss"][-1][1] == pytest.approx(metrics["history"][-1]["train.loss"])


def test_report_of_a_study_without_results_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A study that has not finished a trial yet gets an error naming it, not a traceback or an empty page."""
    from kon_ray.studies.folder import SPEC_FILE, TrialSpec

    folder = tmp_path / "empty"
    folder.mkdir()
    spec = TrialSpec("empty", {}, {}, {}, ("model.k",), "valid.mrr", "max", 2, str(tmp_path / "train"))
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_json()))
    main(["study", "status", str(folder)])  # trials Tune has not created yet count as pending
    assert "empty: 2 trials: 0 terminated, 0 error, 0 pruned, 0 running, 2 pending" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(folder), "--storage", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "empty" in capsys.readouterr().err and not (tmp_path / "report-empty.html").exists()


def test_report_of_a_folder_that_is_not_a_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["report", str(tmp_path)])
    assert "not a study folder" in capsys.readouterr().err


def test_data_baseline_prints_both_baselines_and_directions(tiny_kg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["data", "baseline", str(tiny_kg)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("relation frequency") and lines[4].startswith("relation token prior")
    for block in (lines[1:4], lines[5:8]):
        assert [line.split()[0] for line in block] == ["all", "tail", "head"]
        assert all(0 < float(line.split()[2]) <= 1 for line in block)  # MRR
