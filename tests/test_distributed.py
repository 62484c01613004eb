"""K-ON on Ray Train workers running DeepSpeed over gloo, on a real local Ray bound to 127.0.0.1."""

from __future__ import annotations

import ipaddress
import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
import torch

from kon_ray.config import ConfigError
from kon_ray.distributed import check_resources, launch, start_ray
from kon_ray.training.monitor import TENSORBOARD_DIR
from tests.conftest import backbone_config, read_scalars, tiny_config

# The same global batch of 16 queries per step, split over 1 or 2 workers.
STEPS = ["train.max_steps=8", "train.evals_per_epoch=4", "train.batch_size=16", "train.threads=1"]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    start_ray(None, num_cpus=2)
    yield
    ray.shutdown()


def losses(metrics: dict) -> list[float]:
    return [record["train.loss"] for record in metrics["history"]]


@pytest.mark.slow
def test_two_workers_zero2_match_one_worker(
    local_ray: None, tiny_kg: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """2 CPU workers with ZeRO-2 train, report, and follow the 1-worker loss curve (same seed, batch)."""
    two = launch(tiny_config(tiny_kg, *STEPS, "train.workers=2", "train.zero_stage=2"), tmp_path / "two")
    one = launch(tiny_config(tiny_kg, *STEPS, "train.workers=1", "train.grad_accum=2"), tmp_path / "one")
    # Without ray[default] Train's placement-group cleaner would warn every second (start_ray quiets it).
    err = capfd.readouterr().err
    assert "Failed to query" not in err
    assert "valid MRR=" in err  # the driver's bar, moved by each validation that Ray Train reports
    # The driver writes each report as TensorBoard scalars, at the steps of the run's history.
    scalars = read_scalars(tmp_path / "two" / TENSORBOARD_DIR)
    assert scalars["valid/mrr"] == [(r["step"], pytest.approx(r["valid.mrr"])) for r in two["history"]]
    assert two["workers"] == 2 and one["workers"] == 1
    assert len(losses(two)) == len(losses(one)) >= 2
    # Same micro-batches, negatives and dropout; only the gradient reduction order differs.
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    assert two["test.mrr"] == pytest.approx(one["test.mrr"], abs=0.02)
    assert (tmp_path / "two" / "metrics.json").exists() and (tmp_path / "two" / "ranks.parquet").exists()
    for key in ("queries_per_s", "valid.mrr", "train.loss", "lr"):
        assert key in two["history"][-1]
    assert two["trainable_params"] > 0 and two["step_time_s"] > 0
    from kon_ray.saved_run import load_run
    from kon_ray.training import evaluate

    saved = load_run(tmp_path / "two")  # the run folder keeps the best weights and the tokenizer
    assert evaluate(saved.setup, "test", None)[0]["mrr"] == pytest.approx(two["test.mrr"], abs=1e-9)


@pytest.mark.slow
def test_resume_on_other_data_is_refused_in_one_line(
    local_ray: None, tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    """On Ray Train workers too, a checkpoint of another KG is refused naming both hashes, and so
    is a finished run launched again on another KG."""
    kg = shutil.copytree(tiny_kg, tmp_path / "kg")
    original = (kg / "train.tsv").read_text()
    config = tiny_config(kg, *STEPS)
    crash_after(2)
    with pytest.raises(Exception, match="injected crash"):
        launch(config, tmp_path / "run", max_failures=0)
    (kg / "train.tsv").write_text(original + "Kalomi\tfriendOf\tCity of Vi\n")
    with pytest.raises(ConfigError, match="was written by another run \\(data hash [0-9a-f]{64} -> ") as error:
        launch(config, tmp_path / "run", max_failures=0)
    assert "\n" not in str(error.value)
    (kg / "train.tsv").write_text(original)
    finished = launch(config, tmp_path / "run", max_failures=0)  # the refusal left the checkpoint intact
    (kg / "train.tsv").write_text(original + "Kalomi\tfriendOf\tCity of Vi\n")
    with pytest.raises(ConfigError, match=f"finished on other data \\(data hash {finished['data_hash']} -> "):
        launch(config, tmp_path / "run", max_failures=0)


@pytest.mark.slow
def test_crashed_run_resumes_to_the_same_result(
    local_ray: None, tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    """A worker crash after a checkpoint: the group restarts from it and ends as if never stopped."""
    config = tiny_config(tiny_kg, *STEPS, "train.workers=2", "train.zero_stage=2")
    whole = launch(config, tmp_path / "whole")
    crashed = crash_after(4)
    resumed = launch(config, tmp_path / "resumed", max_failures=1)
    assert crashed.exists()
    assert resumed["steps"] == whole["steps"]
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-4)
    assert resumed["test.mrr"] == pytest.approx(whole["test.mrr"], abs=1e-6)


@pytest.mark.slow
def test_local_workers_listen_on_loopback_only(local_ray: None, tmp_path: Path) -> None:
    """A local Ray Train worker, its process group (torch's rendezvous store) set up, opens no port
    on the network: every TCP socket it listens on is bound to a loopback address."""
    import ray.train
    from ray.train.torch import TorchTrainer

    def write_listening(config: dict) -> None:
        import ipaddress
        import os

        sockets = set()
        for fd in os.listdir("/proc/self/fd"):
            try:
                sockets.add(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                continue  # closed meanwhile
        listening = []
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/self/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if cols[3] == "0A" and f"socket:[{cols[9]}]" in sockets:  # 0A: LISTEN
                    raw = bytes.fromhex(cols[1].split(":")[0])  # 32-bit words in host (little-endian) order
                    packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                    listening.append(str(ipaddress.ip_address(packed)))
        Path(config["out"]).write_text(",".join(listening))

    out = tmp_path / "listening"
    run = ray.train.RunConfig(name="listen", storage_path=str(tmp_path))
    TorchTrainer(write_listening, train_loop_config={"out": str(out)}, run_config=run).fit()
    addresses = [ipaddress.ip_address(a) for a in out.read_text().split(",")]
    assert addresses  # the rendezvous store at least
    assert all((getattr(a, "ipv4_mapped", None) or a).is_loopback for a in addresses), addresses


def test_relaunch_with_other_settings_is_refused(tiny_kg: Path, tmp_path: Path) -> None:
    from kon_ray.training import run

    run(tiny_config(tiny_kg, "train.max_steps=2"), tmp_path)
    with pytest.raises(ConfigError, match="model.k: 4 -> 3"):
        run(tiny_config(tiny_kg, "train.max_steps=2", "model.k=3"), tmp_path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.zero_stage=4"], "ZeRO stages are 0, 1, 2 and 3"),
        (["train.workers=2", "train.grad_accum=3", "train.batch_size=16"], "must be divisible by train.workers"),
    ],
)
def test_bad_settings_rejected_on_construction(tiny_kg: Path, overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_config(tiny_kg, *overrides)


def test_more_gpus_than_the_cluster_has_is_rejected_before_workers_start(tiny_kg: Path) -> None:
    config = tiny_config(tiny_kg, "train.workers=2", "train.gpus_per_worker=1")
    with pytest.raises(ConfigError, match="needs 2 GPUs; the cluster has 0"):
        check_resources(config, {"CPU": 2.0}, [{"CPU": 2.0}])
    big = tiny_config(tiny_kg, "train.workers=1", "train.gpus_per_worker=8")
    with pytest.raises(ConfigError, match="no node has that many GPUs"):
        check_resources(big, {"CPU": 32.0, "GPU": 8.0}, [{"GPU": 4.0}, {"GPU": 4.0}])


@pytest.fixture
def ray_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """``launch`` fails the test if it starts Ray (a check left to the workers would need it)."""
    from kon_ray.distributed import train_run

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("launch started Ray before refusing the config")

    monkeypatch.setattr(train_run, "start_ray", refuse)


def test_launch_rejects_before_starting_ray(ray_refused: None, tiny_kg: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss.negatives"):
        launch(tiny_config(tiny_kg, "loss.negatives=100000"), tmp_path)


def test_launch_refuses_a_name_merging_with_the_prompt_before_starting_ray(
    ray_refused: None, tiny_kg: Path, tmp_path: Path, backbones: Callable[[str], Path]
) -> None:
    folder = shutil.copytree(backbones("llama"), tmp_path / "merging")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["vocab"]["=▁"] = len(spec["model"]["vocab"])
    spec["model"]["merges"].insert(0, ["=", "▁"])  # '=' then ' Name': eq. 8's tokens are not the name's
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"merges the entity name '\w+' with the prompt's last word '='"):
        launch(backbone_config(tiny_kg, folder, "data.prompt=compact"), tmp_path / "run")
    plain = backbone_config(tiny_kg, backbones("llama"), "data.prompt=compact")
    with pytest.raises(AssertionError, match="started Ray"):  # the unmodified tokenizer passes
        launch(plain, tmp_path / "run")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bf16 DeepSpeed training on GPU)")
def test_cuda_bf16_training(tiny_kg: Path, tmp_path: Path) -> None:
    from kon_ray.training import run

    metrics = run(tiny_config(tiny_kg, "train.max_steps=20"), tmp_path)
    assert metrics["device"].startswith("cuda") and metrics["steps"] == 20
    assert math.isfinite(metrics["history"][-1]["train.loss"])  # bf16 stays finite
