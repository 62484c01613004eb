"""Studies: every shipped study validates without running; tiny studies run on a real local Ray."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import psutil
import pytest

from kon_ray.config import ConfigError, RunConfig, flatten
from kon_ray.studies import Study, check_study, load_study
from kon_ray.studies.folder import LIVE_STATE_S
from kon_ray.studies.table import METRICS, study_table
from tests.conftest import tiny_config, write_tiny_kg

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "studies").glob("*.py"))
# Evaluate every 2 steps (18 steps per epoch on the tiny KG): 2 validations, then the test.
STEPS = ("train.max_steps=4", "train.evals_per_epoch=9")


def tiny_base(kg: Path) -> dict:
    """The tiny config as a study's base: its differences from the defaults."""
    default = dict(flatten(RunConfig().to_dict()))
    return {k: v for k, v in flatten(tiny_config(kg, *STEPS).to_dict()) if default[k] != v}


def write_study(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.py"
    path.write_text(f"from kon_ray.studies import Choice, FloatRange, IntRange, Study\n\n{body}\n")
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_study_validates(path: Path) -> None:
    study = load_study(path)
    configs = check_study(study, path)
    assert configs and study.name == path.stem
    if study.name == "paper":  # the main setting validates without downloading the model
        assert configs[0].model.backbone == "meta-llama/Llama-2-7b-chat-hf" and configs[0].train.workers == 8


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('study = Study(name="x", base={"model.kk": 1})', r"bad\.py: base: model\.kk: unknown key 'kk'"),
        ('study = Study(name="x", grid={"model.k": [0, 2]})', r"bad\.py: grid point \{'model.k': 0\}: model\.k=0: .* >= 1"),
        ('study = Study(name="x", grid={"loss.negatives": [8, 51]})', r"loss\.negatives=51: \|N\| must be below .* \(51\)"),
        ('study = Study(name="x", space={})', r"bad\.py: space=\{\}: empty search space"),
        ('study = Study(name="x", grid={"model.k": [2]}, scheduler="hyperband")', r"bad\.py: scheduler='hyperband'"),
        ('study = Study(name="x", grid={"model.k": [2]}, metric="test.mrr")', r"metric='test\.mrr': never tune on the test"),
        ('study = Study(name="x", space={"train.lr": FloatRange(1e-3, 1e-5)})', r"FloatRange\(low=0\.001"),
        ("x = 1", r"bad\.py: exports no `study = Study\(...\)`"),
        ('study = Study(name="x", grid={"model.k": [2]}, metric="valid.mrrr")', r"metric='valid\.mrrr': trials report no such"),
        ('study = Study(name="..", grid={"model.k": [2]})', r"name='\.\.': must be a plain name"),
        ('study = Study(name="a/b", grid={"model.k": [2]})', r"name='a/b': must be a plain name"),
    ],
)
def test_malformed_study_rejected_before_ray(tiny_kg: Path, tmp_path: Path, body: str, message: str) -> None:
    import ray

    from kon_ray.studies.tune import run_study

    path = write_study(tmp_path, "bad", body)
    with pytest.raises(ConfigError, match=message):
        run_study(load_study(path), path, {"data.dataset": str(tiny_kg), "data.valid_unseen": "false"}, tmp_path / "runs")
    assert not ray.is_initialized()


def test_every_reported_validation_metric_is_a_study_metric() -> None:
    from kon_ray.evaluation import summarize
    from kon_ray.studies.study import STUDY_METRICS

    reported = {f"valid.{k}" for k in summarize([1.0, 2.0], [0, 1]) if not k.endswith("queries")}
    assert set(STUDY_METRICS) == reported


def corrupt_study_folder(folder: Path, broken: str) -> Path:
    """A study folder as a run leaves it, with its ``study.json`` or Tune's state cut short."""
    from kon_ray.studies.tune import save_spec, trial_spec

    study = Study(name=folder.name, grid={"model.k": [2]})
    folder.mkdir(parents=True)
    save_spec(folder, trial_spec(study, folder, {}), {})
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [["{')
    if broken == "study.json":
        (folder / "study.json").write_text((folder / "study.json").read_text()[:40])
    return folder


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("syntax", r"bad\.py:3: SyntaxError: '\(' was never closed"),
        ("import", r"bad\.py:3: ModuleNotFoundError: No module named 'kon_ray_nope'"),
        ("name", r"bad\.py:4: NameError: name 'Grid' is not defined"),
        ("study.json", r"x[/\\]study\.json:\d+: corrupt study record"),
        ("state", r"experiment_state-2026-01-01_00-00-00\.json: Tune's saved state cannot be read"),
    ],
)
def test_user_errors_end_in_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    from kon_ray.cli import main

    bodies = {"syntax": 'study = Study(name="x"', "import": "import kon_ray_nope", "name": "x = 1\nstudy = Grid()"}
    if case in bodies:
        argv = ["study", "validate", str(write_study(tmp_path, "bad", bodies[case]))]
    else:
        argv = ["study", "status", str(corrupt_study_folder(tmp_path / "x", case))]
    with pytest.raises(SystemExit) as exit:
        main(argv)
    err = capsys.readouterr().err
    assert exit.value.code == 2 and len(err.strip().splitlines()) == 1 and re.search(message, err), err


def test_a_study_refused_before_it_runs_leaves_no_folder(
    tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kon_ray.cli import main

    path = write_study(tmp_path, "x", f'study = Study(name="x", base={tiny_base(tiny_kg)!r}, grid={{"model.k": [2]}})')
    with pytest.raises(SystemExit) as exit:
        main(["study", "run", str(path), "--storage", str(tmp_path / "runs"), "train.lr=-1"])
    assert exit.value.code == 2 and "train.lr" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "x").exists()


def test_resume_refuses_a_changed_study_file(tiny_kg: Path, tmp_path: Path) -> None:
    import ray

    from kon_ray.studies.resume import check_resume
    from kon_ray.studies.tune import run_study, save_spec, trial_spec

    study = Study(name="x", base=tiny_base(tiny_kg), grid={"model.k": [2, 4]}, max_concurrent_trials=2)
    folder = tmp_path / "x"
    save_spec(folder, trial_spec(study, folder, {"train.lr": "0.01"}), {"train.lr": "0.01"})
    changed = dataclasses.replace(study, grid={"model.k": [2, 8]}, base={**study.base, "loss.negatives": 8})
    with pytest.raises(ConfigError) as refused:
        run_study(changed, "x.py", storage=tmp_path, resume=True)
    assert not ray.is_initialized()
    text = str(refused.value)
    assert text.startswith(f"--resume: x.py changed since {folder} ran (") and "or pass --force" in text
    assert "grid['model.k']: [2, 4] -> [2, 8]" in text and "base['loss.negatives']: 16 -> 8" in text
    assert check_resume(changed, "x.py", folder, {}, force=True) == {"train.lr": "0.01"}
    unchanged = dataclasses.replace(study, max_concurrent_trials=1)  # how many at once is not what runs
    assert check_resume(unchanged, "x.py", folder, {}, force=False) == {"train.lr": "0.01"}
    with pytest.raises(ConfigError, match=r"overrides \{'train.lr': '0.1'\} differ from the run's"):
        check_resume(study, "x.py", folder, {"train.lr": "0.1"}, force=True)


def test_an_inline_checkpoint_appears_whole_or_not_at_all(tmp_path: Path) -> None:
    """A one-worker trial's checkpoints: written aside, renamed into place, the newest KEEP kept."""
    from kon_ray.studies.inline import KEEP, latest_checkpoint, publish

    run = tmp_path / "train-x"
    written = [publish(run, lambda f, n=n: (f / "state.json").write_text(str(n))) for n in range(3)]
    assert sorted(run.glob("checkpoint_*")) == written[-KEEP:] and latest_checkpoint(run) == written[-1]

    def crash(folder: Path) -> None:
        (folder / "state.json").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        publish(run, crash)
    assert sorted(run.iterdir()) == written[-KEEP:]  # nothing half written left behind
    final = publish(run, lambda f: (f / "metrics.json").write_text("{}"))
    assert latest_checkpoint(run) == written[-1] and (final / "metrics.json").is_file()  # resumes nothing


def test_overriding_a_varied_key_is_rejected(tiny_kg: Path) -> None:
    study = Study(name="x", base=tiny_base(tiny_kg), grid={"model.k": [2, 4]})
    with pytest.raises(ConfigError, match=r"s\.py: overrides \['model\.k'\] set keys the study varies"):
        check_study(study, "s.py", {"model.k": 3})


def test_concurrent_trials_fit_the_cluster(tiny_kg: Path) -> None:
    """Trials never wait for workers that cannot start: concurrency follows the free CPUs and GPUs."""
    from kon_ray.studies.tune import plan_resources

    study = Study(name="x", base=tiny_base(tiny_kg), grid={"model.k": [2, 3, 4]}, max_concurrent_trials=4)
    configs = check_study(study, "x.py")
    assert plan_resources(study, configs, {"CPU": 2.0, "trial_slot": 2.0}, [{"CPU": 2.0}]) == (2, 1.0, {"trial_slot": 1.0})
    assert plan_resources(study, configs, {"CPU": 2.0}, [{"CPU": 2.0}]) == (1, 1.0, {"CPU": 0.01})  # drivers take CPU
    paper = dataclasses.replace(load_study(ROOT / "studies" / "paper.py"), seeds=(0, 1, 2), max_concurrent_trials=4)
    sixteen = {"CPU": 64.0, "GPU": 16.0, "trial_slot": 4.0}
    assert plan_resources(paper, check_study(paper, "paper.py"), sixteen, [{"GPU": 8.0}] * 2) == (2, None, {"trial_slot": 1.0})
    with pytest.raises(ConfigError, match="needs 8 GPUs; the cluster has 4"):
        plan_resources(paper, check_study(paper, "paper.py"), {"CPU": 64.0, "GPU": 4.0}, [{"GPU": 4.0}])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "kon_ray.cli", *args]


def finished_runs(folder: Path) -> dict[str, Path]:
    """Trial id -> Ray Train run folder, for each run whose checkpoint holds its final metrics."""
    runs = {p.parents[1] for p in folder.glob("train/train-*/checkpoint_*/metrics.json")}
    return {run.name.removeprefix("train-"): run for run in runs}


def run_record(run: Path) -> dict[str, int]:
    """A trial's run folder: what is in it, and when each was last written (a run that starts again
    writes checkpoints, and Ray Train its storage marker)."""
    return {p.name: p.stat().st_mtime_ns for p in run.iterdir()}


def status_of(folder: Path) -> str:
    done = subprocess.run(cli("study", "status", str(folder)), check=True, capture_output=True, text=True)
    return done.stdout


def tune_saved(folder: Path) -> dict[str, str]:
    """Trial id -> status, as the newest session of Tune last saved it."""
    state = json.loads(max(folder.glob("experiment_state*.json")).read_text())
    return {t["trial_id"]: t["status"] for t in (json.loads(trial) for trial, _ in state["trial_data"])}


def kill_tree(driver: subprocess.Popen[bytes]) -> None:
    """SIGKILL the driver and every process under it, and wait until all are gone. Ray's worker
    processes (an inline trial trains in one) have sessions of their own, out of reach of killpg,
    and would otherwise go on writing after the kill; each is stopped first, so none starts another,
    the driver before all (it saves Tune's state)."""
    root = psutil.Process(driver.pid)
    root.suspend()
    processes = {root}
    while new := {root, *root.children(recursive=True)} - processes:
        for process in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.suspend()
        processes |= new
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    driver.wait()
    psutil.wait_procs(list(processes), timeout=30)


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_or_losing_a_trial(
    tmp_path: Path, stall_final_report: Callable[[float], Path]
) -> None:
    """Two trials at once; kill the driver (and its local Ray) once a trial's run has written its
    final result and before Tune heard of it (the trial stalls there). The trial counts as finished
    from that record, and --resume reports it without training it again, keeping its real times."""
    kg = write_tiny_kg(tmp_path / "kg")  # its own copy: the end of the test changes it
    grid = '{"model.k": [2, 4]}'
    body = f'study = Study(name="killed", base={tiny_base(kg)!r}, grid={grid}, max_concurrent_trials=2, '
    body += 'analyses=("heads_curve",))'
    path, storage = write_study(tmp_path, "killed", body), tmp_path / "runs"
    folder = storage / "killed"
    stalled = stall_final_report(600)
    driver = subprocess.Popen([*cli("study", "run", str(path), "--storage", str(storage))], start_new_session=True)
    try:
        deadline = time.time() + 300
        while not stalled.exists():
            assert driver.poll() is None and time.time() < deadline, "no trial finished"
            time.sleep(0.1)
    finally:
        kill_tree(driver)
    killed = time.time()
    runs = finished_runs(folder)
    lagging = {
        trial for trial, status in tune_saved(folder).items() if trial in runs and status != "TERMINATED"
    }
    assert lagging, "Tune had saved every finished trial: the stall did not hold the report back"
    before = {trial: run_record(run) for trial, run in runs.items()}
    table = study_table(folder).set_index("trial_id")
    assert set(table.index[table["status"] == "TERMINATED"]) == set(runs)  # however stale Tune's state
    assert table.loc[list(runs), "test.mrr"].notna().all()
    assert f"2 trials: {len(runs)} terminated" in status_of(folder)
    subprocess.run(cli("study", "run", str(path), "--storage", str(storage), "--resume"), check=True, timeout=400)
    table = study_table(folder)
    assert sorted(table["config.model.k"]) == [2, 4] and table["trial_id"].is_unique
    assert (table["status"] == "TERMINATED").all() and table["test.mrr"].notna().all()
    for trial, run in runs.items():  # not started again: no new checkpoint, no new attempt
        assert run_record(run) == before[trial]
    rows = table.set_index("trial_id")
    for trial in rows.index:  # the real times: the first start, and the run's own end
        started, ended = (
            datetime.datetime.fromisoformat(rows.loc[trial, c]).timestamp() for c in ("started", "ended")
        )
        assert started < ended and (trial not in runs or ended <= killed)
    for trial in lagging:  # reported once, after the resume
        (results,) = folder.glob(f"*{trial}*/result.json")
        assert sum('"final"' in line for line in results.read_text().splitlines()) == 1
    status = status_of(folder)
    assert "2 trials: 2 terminated" in status and "best valid.mrr" in status
    report = subprocess.run(cli("report", str(path), "--storage", str(storage)), check=True, capture_output=True, text=True)
    html = Path(report.stdout.split("report: ")[-1].strip())
    assert html == (storage / "report-killed.html").resolve() and 'id="fig-heads"' in html.read_text()
    # A trial that the driver last saved as running, and whose run has not finished, shows as RUNNING
    # while that state is fresh; once it is stale (the driver stopped), as PENDING: --resume would run it.
    state = max(folder.glob("experiment_state*.json"))  # the resumed session's
    saved = json.loads(state.read_text())
    trial, meta = (json.loads(part) for part in saved["trial_data"][0])
    saved["trial_data"][0] = [
        json.dumps({**trial, "status": "RUNNING"}),
        json.dumps({**meta, "last_result": {}}),
    ]
    state.write_text(json.dumps(saved))
    run = folder / "train" / f"train-{trial['trial_id']}"
    for checkpoint in run.glob("checkpoint_*"):
        (checkpoint / "metrics.json").unlink(missing_ok=True)
    assert study_table(folder).set_index("trial_id").loc[trial["trial_id"], "status"] == "RUNNING"
    stale = time.time() - LIVE_STATE_S - 60
    os.utime(state, (stale, stale))
    assert study_table(folder).set_index("trial_id").loc[trial["trial_id"], "status"] == "PENDING"
    # A resume on a changed KG is refused before Ray starts, naming a trial and both data hashes.
    with (kg / "train.tsv").open("a") as f:
        f.write("Kalomi\tfriendOf\tCity of Vi\n")
    refused = subprocess.run(cli("study", "run", str(path), "--storage", str(storage), "--resume"), capture_output=True, text=True)
    assert refused.returncode == 2 and "Started a local Ray" not in refused.stderr, refused.stderr
    assert re.search(r"trial \w+ of .* ran on other data \(data.dataset=.*: data hash [0-9a-f]{64} -> [0-9a-f]{64}\)", refused.stderr)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    from kon_ray.distributed import start_ray

    start_ray(None, num_cpus=2, resources={"trial_slot": 2}, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_grid_with_a_failing_trial_retries_and_records_it(
    local_ray: None, tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    """2 grid points; a worker crashes once after its first checkpoint, the trial is retried from it."""
    from kon_ray.studies.inline import latest_checkpoint
    from kon_ray.studies.tune import run_study

    study = Study(name="grid", base=tiny_base(tiny_kg), grid={"model.k": [2, 4]}, max_retries=1)
    crashed = crash_after(2)
    table = run_study(study, "grid.py", storage=tmp_path)
    assert crashed.exists()
    assert sorted(table["config.model.k"]) == [2, 4] and (table["status"] == "TERMINATED").all()
    for column in (*METRICS, "trainable_params", "step_time_s", "train_time_s", "device_hours", "git_commit", "data_hash"):
        assert table[column].notna().all(), column
    assert (table["best.valid.mrr"] == table["valid.mrr"]).all()  # finished: valid.* is the best validation
    retried = table[table["failures"] > 0]
    assert len(retried) >= 1 and retried["error"].str.contains("injected crash after step 2").all()
    assert set(table["config.data.dataset"]) == {str(tiny_kg)} and set(table["config.model.backbone"]) == {"embedded"}
    for run in (tmp_path / "grid" / "train").glob("train-*"):  # one worker: trained in the trial's process
        assert not (run / ".validate_storage_marker").exists()  # no Ray Train run
        assert json.loads((latest_checkpoint(run) / "state.json").read_text())["step"] == 4  # last validation
    exported = pd.read_parquet(tmp_path / "grid" / "grid.parquet")
    assert len(exported) == 2 and (tmp_path / "grid" / "grid.csv").exists()
    from kon_ray.saved_run import load_run

    for _, row in table.iterrows():  # each trial keeps its best weights and tokenizer, found by its id
        saved = load_run(tmp_path / "grid" / row["trial_id"])
        assert saved.setup.config.model.k == row["config.model.k"] and saved.record["test.mrr"] == row["test.mrr"]


@pytest.mark.slow
def test_optuna_search_with_asha_records_every_trial(local_ray: None, tiny_kg: Path, tmp_path: Path) -> None:
    from kon_ray.studies import Choice, FloatRange, IntRange
    from kon_ray.studies.tune import run_study

    space = {"model.k": IntRange(2, 4), "train.lr": FloatRange(1e-3, 1e-2, log=True), "loss.sft": Choice(("eq13", "cross_entropy"))}
    study = Study(name="search", base=tiny_base(tiny_kg), space=space, num_samples=3, max_concurrent_trials=2, scheduler="asha")
    table = run_study(study, "search.py", storage=tmp_path)
    assert len(table) == 3 and set(table["status"]) <= {"TERMINATED", "PRUNED"}
    assert (table["best.valid.mrr"] >= table["valid.mrr"]).all()  # pruned: best so far vs latest validation
    assert table["config.model.k"].between(2, 4).all() and table["valid.mrr"].notna().all()
    finished = table[table["status"] == "TERMINATED"]
    assert len(finished) >= 1 and finished["test.mrr"].notna().all()
    with sqlite3.connect(tmp_path / "search" / "optuna.db") as db:
        assert db.execute("select count(*) from trials").fetchone() == (3,)
