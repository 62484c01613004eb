"""The study folder is read as JSON, without Ray: the same trials as Ray's own reader, and the
commands that only read it (``study status``, ``study export``, ``report``) load neither torch,
DeepSpeed nor Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kon_ray.cli import main
from kon_ray.paper import PaperValues, published_to_json
from kon_ray.studies.folder import SPEC_FILE, TrialSpec, read_trials

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "deepspeed", "ray")


def _trainable(config: dict) -> None:
    from ray import tune

    if config["model.k"] == 4 and config["seed"] == 1:
        raise RuntimeError("boom: a failing trial")
    tune.report({"valid.mrr": 0.1 * config["model.k"]})
    cost = {"trainable_params": 10 * config["model.k"], "step_time_s": 0.1, "train_time_s": 3.0}
    tune.report({"valid.mrr": 0.2 * config["model.k"], "test.mrr": 0.3, "final": 1, **cost})


@pytest.fixture(scope="module")
def tune_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real Tune experiment of four trials (one failing) with a study.json beside it."""
    import ray
    from ray import tune

    from kon_ray.distributed import start_ray

    storage = tmp_path_factory.mktemp("studies")
    start_ray(None, num_cpus=2, include_dashboard=False)
    try:
        tune.Tuner(
            _trainable,
            param_space={"model.k": tune.grid_search([2, 4]), "seed": tune.grid_search([0, 1])},
            tune_config=tune.TuneConfig(metric="valid.mrr", mode="max"),
            run_config=tune.RunConfig(name="s", storage_path=str(storage), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    folder = storage / "s"
    paper = published_to_json(PaperValues("Figure 3", note="the study's own note"))
    spec = TrialSpec(
        "s", {}, {}, {}, ("model.k",), "valid.mrr", "max", 4, str(folder / "train"), analyses=("heads_curve",), paper=paper
    )
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_json()))
    return folder


def test_saved_trials_match_rays_reader(tune_folder: Path) -> None:
    from ray.tune import ExperimentAnalysis

    ours = {t.trial_id: t for t in read_trials(tune_folder)}
    theirs = {t.trial_id: t for t in ExperimentAnalysis(str(tune_folder)).trials}
    assert ours.keys() == theirs.keys() and len(ours) == 4
    for trial_id, trial in theirs.items():
        saved = ours[trial_id]
        assert (saved.status, dict(saved.config)) == (trial.status, trial.config)
        assert saved.num_failures == trial.run_metadata.num_failures == (saved.status == "ERROR")
        # Ray adds the id to an empty result
        assert {"trial_id": trial_id, **saved.last_result} == trial.last_result
        assert dict(saved.metric_analysis) == trial.metric_analysis
        assert saved.path == Path(trial.path)
    assert sorted(t.status for t in ours.values()) == ["ERROR", "TERMINATED", "TERMINATED", "TERMINATED"]


@pytest.mark.parametrize("command", ["status", "export", "report"])
def test_reading_a_study_loads_no_heavy_library(tune_folder: Path, tmp_path: Path, command: str) -> None:
    argv = {
        "status": ["study", "status", str(tune_folder)],
        "export": ["study", "export", str(tune_folder), "--out", str(tmp_path)],
        "report": ["report", str(tune_folder), "--out", str(tmp_path / "r.html")],
    }[command]
    code = (
        "import sys\nfrom kon_ray.cli import main\n"
        f"main({argv!r})\nprint('loaded:', [m for m in {HEAVY!r} if m in sys.modules])"
    )
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.splitlines()[-1] == "loaded: []", run.stdout
    if command == "status":
        assert "s: 4 trials: 3 terminated, 1 error" in run.stdout
        assert "failed: trial" in run.stdout and "RuntimeError: boom" in run.stdout
    elif command == "export":
        assert (tmp_path / "s.parquet").is_file() and (tmp_path / "s.csv").is_file()
    else:
        assert (tmp_path / "r.html").is_file()


def test_report_draws_what_the_study_saved(tune_folder: Path, tmp_path: Path) -> None:
    """study.json carries the study's analyses and paper values to ``kon-ray report``."""
    main(["report", str(tune_folder), "--out", str(tmp_path / "r.html")])
    page = (tmp_path / "r.html").read_text()
    assert 'id="fig-heads"' in page and "the study&#x27;s own note" in page and 'id="table-' not in page
