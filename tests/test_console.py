"""What a person sees: the terminal's lines, the log file, the live trial table, TensorBoard events."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from kon_ray import console
from kon_ray.console import FILE_ONLY, Live
from kon_ray.studies.progress import TrialRow, event_line, trial_table
from kon_ray.training.monitor import Monitor, scalar_tag
from tests.conftest import read_scalars


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Path]:
    """Logging as ``kon-ray`` sets it up (default verbosity), the log file in ``tmp_path``; undone after."""
    root, ray_logger = logging.getLogger(), logging.getLogger("ray")
    level, ray_handlers, ray_propagate = root.level, ray_logger.handlers, ray_logger.propagate
    console.setup(verbose=False)
    path = console.open_log(tmp_path)
    console.capture_ray_logging()  # as the CLI does after importing Ray (an earlier test may have)
    assert path.read_text().endswith(f"INFO kon_ray.console: log: {path}\n")  # named on the terminal too
    yield path
    ray_logger.handlers, ray_logger.propagate = ray_handlers, ray_propagate
    console.close_log()
    root.removeHandler(console._console.handler)
    console._console.handler = None
    root.setLevel(level)


def library_logger(name: str) -> logging.Logger:
    """A logger as DeepSpeed makes its own on import: a stdout handler, no propagation."""
    logger = logging.getLogger(name)
    logger.handlers, logger.propagate = [logging.StreamHandler(sys.stdout)], False
    return logger


def test_terminal_shows_kon_ray_lines_the_log_file_everything(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logging.getLogger("kon_ray.studies").info("trial 1 finished")
    logging.getLogger("kon_ray.training.fit").info("step 10: valid MRR 0.1", extra=FILE_ONLY)
    logging.getLogger("ray.tune").warning("PreemptionWatcher has constructor arguments")
    logging.getLogger("kon_ray.data").debug("a debug line")
    library_logger("DeepSpeed").warning("Setting accelerator to CPU")
    out, err = capsys.readouterr()
    assert out == ""
    assert [line.split(": ", 1)[1] for line in err.splitlines()] == ["trial 1 finished"]
    text = logs.read_text()
    for line in ("trial 1 finished", "step 10: valid MRR 0.1", "PreemptionWatcher", "Setting accelerator"):
        assert line in text
    assert "a debug line" not in text


def test_verbose_shows_everything(logs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    console.setup(verbose=True)
    logging.getLogger("kon_ray.training.fit").info("step 10: valid MRR 0.1", extra=FILE_ONLY)
    logging.getLogger("ray.tune").warning("PreemptionWatcher")
    logging.getLogger("kon_ray.data").debug("a debug line")
    err = capsys.readouterr().err
    assert "step 10" in err and "PreemptionWatcher" in err and "a debug line" in err


def test_ray_process_output_goes_to_the_log_file(logs: Path) -> None:
    report = "Reporting training result 1: TrainingReport("
    console._log_ray_output({"pid": 12, "actor_name": "RayTrainWorker", "lines": [report]})
    console._log_ray_output({"pid": "raylet", "lines": ["WARNING: 8 PYTHON worker processes have started"]})
    text = logs.read_text()
    assert "(RayTrainWorker pid=12) Reporting training result 1: TrainingReport(" in text
    assert "(raylet) WARNING: 8 PYTHON worker processes have started" in text


def test_live_block_is_redrawn_in_place_below_log_lines(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    screen = io.StringIO()
    with Live(screen) as live:
        live.show(["a", "b"])
        live.show(["c", "d", "e"])
        logging.getLogger("kon_ray.studies").info("a log line")
    assert screen.getvalue() == "a\nb\n\x1b[2F\x1b[Jc\nd\ne\n\x1b[3F\x1b[Jc\nd\ne\n"
    assert "a log line" in capsys.readouterr().err  # written between erasing and redrawing
    assert console._console.live is None


def rows() -> list[TrialRow]:
    return [
        TrialRow("a_00000", {"model.k": 2, "seed": 0}, "TERMINATED", 1.0, 0.2101, 0.25, 75.0),
        TrialRow("a_00001", {"model.k": 8, "seed": 0}, "RUNNING", 0.4712, 0.1, 0.3, 3725.0),
        TrialRow("a_00002", {"model.k": 16, "seed": 0}, "PENDING", None, None, None, 0.0),
    ]


def test_trial_table_columns() -> None:
    lines = trial_table("quick", "valid.mrr", "max", 4, rows(), 61.0)
    assert lines[0] == "quick  1:01  1/4 done, 1 running, 0 failed, 0 pruned"
    header = ["trial", "model.k", "seed", "status", "progress", "valid.mrr", "best", "elapsed"]
    assert lines[1].split() == header
    assert lines[2].split() == ["a_00000", "2", "0", "done", "100%", "0.2101", "0.2500", "1:15"]
    assert lines[3].split() == ["a_00001", "8", "0", "running", "47%", "0.1000", "0.3000", "1:02:05"]
    assert lines[4].split() == ["a_00002", "16", "0", "pending", "-", "-", "-", "0:00"]
    assert lines[2].index("done") == lines[1].index("status")  # aligned


def test_event_line_names_the_trial_counts_and_best() -> None:
    line = event_line("quick", "valid.mrr", "max", 4, rows(), rows()[0], "finished")
    assert line == (
        "quick: trial a_00000 (model.k=2, seed=0) finished: best valid.mrr 0.2500 in 1:15 "
        "| 1/4 done, 1 running, 0 failed, 0 pruned; best valid.mrr 0.3000 (trial a_00001)"
    )
    low = event_line("quick", "loss", "min", 4, rows(), rows()[2], "started")
    assert low.startswith("quick: trial a_00002 (model.k=16, seed=0) started |") and "(trial a_00000)" in low


def test_progress_prints_a_line_per_trial_event_without_a_terminal(
    logs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kon_ray.studies.callbacks import Progress

    trial = SimpleNamespace(
        trial_id="t_0", config={"model.k": 2}, status="RUNNING", last_result={}, metric_analysis={}
    )
    progress = Progress("quick", "valid.mrr", "max", 1)
    progress.setup()
    progress.on_trial_start(0, [trial], trial)
    progress.on_trial_result(0, [trial], trial, {"valid.mrr": 0.2, "progress": 0.5})
    trial.last_result, trial.metric_analysis = {"final": 1, "time_total_s": 30.0}, {"valid.mrr": {"max": 0.2}}
    progress.on_trial_complete(0, [trial], trial)
    trial.last_result = {"time_total_s": 30.0}  # no final report: stopped by ASHA or the time budget
    progress.on_trial_complete(0, [trial], trial)
    progress.on_experiment_end([trial])
    lines = [line.split(": ", 1)[1] for line in capsys.readouterr().err.splitlines()]
    best = "best valid.mrr 0.2000"
    assert lines == [
        "quick: trial t_0 (model.k=2) started | 0/1 done, 1 running, 0 failed, 0 pruned",
        f"quick: trial t_0 (model.k=2) finished: {best} in 0:30 | 1/1 done, 0 running, 0 failed, 0 pruned; "
        f"{best} (trial t_0)",
        f"quick: trial t_0 (model.k=2) pruned: {best} in 0:30 | 0/1 done, 0 running, 0 failed, 1 pruned; "
        f"{best} (trial t_0)",
    ]


def read_terminal(master: int) -> str:
    """What a pseudo-terminal's program wrote to it so far, its CR LF line ends read as LF."""
    out = b""
    while select.select([master], [], [], 0.2)[0]:
        out += os.read(master, 65536)
    return out.decode().replace("\r\n", "\n")


def test_progress_redraws_a_live_table_in_place_on_a_terminal(
    logs: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """stdout a pseudo-terminal: the table is redrawn in place, and the event lines go to the log file only."""
    from kon_ray.studies.callbacks import Progress

    master, slave = pty.openpty()
    monkeypatch.setattr(sys, "stdout", os.fdopen(slave, "w"))
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.setenv("LINES", "40")
    done, running = (
        SimpleNamespace(trial_id=f"t_{i}", config={"model.k": k, "seed": 0}, status="RUNNING", last_result={},
                        metric_analysis={}) for i, k in enumerate((2, 8))
    )  # fmt: skip
    trials = [done, running]
    try:
        progress = Progress("quick", "valid.mrr", "max", 3)
        progress.setup()
        for trial in trials:
            progress.on_trial_start(0, trials, trial)
        progress.on_trial_result(0, trials, running, {"valid.mrr": 0.1234, "progress": 0.471})
        running.metric_analysis = {"valid.mrr": {"max": 0.3}}
        done.last_result, done.metric_analysis = {"final": 1, "time_total_s": 75.0}, {"valid.mrr": {"max": 0.25}}
        progress.on_trial_result(0, trials, done, {"valid.mrr": 0.2101, "progress": 1.0})
        progress.on_trial_complete(0, trials, done)
        done.status = "TERMINATED"
        progress.drawn = 0.0  # a second has passed since the last redraw
        progress.on_step_end(0, trials)
        progress.on_experiment_end(trials)
        sys.stdout.flush()
        screen = read_terminal(master)
    finally:
        sys.stdout.close()
        os.close(master)
    blocks = re.split(r"\x1b\[(\d+)F\x1b\[J", screen)  # block, its height, block, ...
    assert len(blocks) == 2 * 4 + 1  # drawn on 2 starts, 1 completion, 1 step end, the experiment's end
    for block, height in zip(blocks[:-1:2], blocks[1::2], strict=True):
        assert len(block.splitlines()) == int(height) == 4  # each erased exactly: summary, header, 2 trials
    last = blocks[-1].splitlines()
    assert last[0].startswith("quick  0:0") and last[0].endswith("1/3 done, 1 running, 0 failed, 0 pruned")
    assert last[1].split() == ["trial", "model.k", "seed", "status", "progress", "valid.mrr", "best", "elapsed"]
    assert last[2].split() == ["t_0", "2", "0", "done", "100%", "0.2101", "0.2500", "1:15"]
    assert last[3].split() == ["t_1", "8", "0", "running", "47%", "0.1234", "0.3000", "0:00"]
    assert capsys.readouterr().err == ""  # no event line on the terminal...
    assert "quick: trial t_0 (model.k=2, seed=0) finished" in logs.read_text()  # ...but in the log file


def test_monitor_writes_tensorboard_scalars(tmp_path: Path) -> None:
    with Monitor(tmp_path, bar=True) as monitor:
        for step, mrr in ((5, 0.1), (10, 0.2)):
            monitor.record({"step": step, "progress": step / 10, "train.loss": 1.0 / step, "valid.mrr": mrr,
                            "valid.hits@10": 2 * mrr, "queries_per_s": 100.0})  # fmt: skip
        assert monitor.bar is not None and monitor.bar.n == 100
        assert str(monitor.bar).endswith("step=10, loss=0.100, valid MRR=0.2000, qps=100")
    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["valid/mrr"] == [(5, pytest.approx(0.1)), (10, pytest.approx(0.2))]
    assert [step for step, _ in scalars["valid/hits_10"]] == [5, 10] and "step" not in scalars
    assert scalar_tag("train.loss") == "train/loss" and scalar_tag("queries_per_s") == "queries_per_s"


NOISE = (
    "TrainingReport", "Checkpoint successfully created", "Setting accelerator to CPU", "PreemptionWatcher",
    "worker processes have been started", "Configuration for experiment",
)  # fmt: skip


@pytest.mark.slow
def test_a_study_prints_a_few_lines_and_logs_the_rest(tiny_kg: Path, tmp_path: Path) -> None:
    """A quickstart-sized study, its console captured (no terminal: a line per trial event)."""
    import subprocess

    from tests.test_studies import cli, tiny_base, write_study

    grid = '{"model.k": [2, 4]}'
    body = f'study = Study(name="quick", base={tiny_base(tiny_kg)!r}, grid={grid}, max_concurrent_trials=2)'
    path, storage = write_study(tmp_path, "quick", body), tmp_path / "runs"
    command = cli("study", "run", str(path), "--storage", str(storage))
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, umask=0o022)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout + run.stderr
    assert len(printed.splitlines()) < 40, printed
    assert [noise for noise in NOISE if noise in printed] == []
    assert printed.count(") started |") == 2 and printed.count(") finished: best valid.mrr") == 2
    folder = storage / "quick"
    assert f"log: {folder / 'console.log'}" in run.stderr and f"tensorboard --logdir {folder}" in run.stdout
    log = (folder / "console.log").read_text()
    # Ray's processes' output kept, in the log file (one-worker trials train in their Tune trial's process)
    assert "(run_trial pid=" in log and "Setting accelerator to CPU" in log
    assert "Node status" not in log  # not the autoscaler's status every few seconds, only its events
    for trial in folder.glob("run_trial_*"):  # Tune's TensorBoard events, one file per trial
        assert len(read_scalars(trial)["ray/tune/valid.mrr"]) >= 2
    for name in ("quick.parquet", "quick.csv", "study.json", "console.log"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name
