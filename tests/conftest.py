"""Shared fixtures: an isolated preprocessing cache, a tiny synthetic KG and a tiny K-ON config."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from kon_ray.config import RunConfig, apply_overrides
from kon_ray.faults import FAULTS_ENV

os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", GLOO_SOCKET_IFNAME="lo")

SYLLABLES = ["ka", "lo", "mi", "ne", "su", "ta", "vi", "ro", "pe", "zu", "da", "fo"]


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["KON_RAY_CACHE"] = str(tmp_path_factory.mktemp("kon-ray-cache"))


@pytest.fixture(autouse=True, scope="session")
def _fault_plan_path(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Set before any Ray starts, so that every Ray process knows where a test plans a fault."""
    os.environ[FAULTS_ENV] = str(tmp_path_factory.mktemp("faults") / "plan.json")


def _arm(tmp_path: Path, fault: str, step: int = 0, seconds: float = 0.0) -> Path:
    """Plan ``fault`` (``kon_ray.faults``) for the test's Ray processes; returns the marker file that
    it leaves, holding the pid of the process it happened in."""
    marker = tmp_path / f"fault-{fault}"
    plan = {"fault": fault, "step": step, "seconds": seconds, "marker": str(marker)}
    Path(os.environ[FAULTS_ENV]).write_text(json.dumps(plan))
    return marker


@pytest.fixture
def crash_after(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``crash_after(n)``: the first process past a checkpoint at step >= n crashes, once."""
    yield lambda step: _arm(tmp_path, "crash_after_step", step)
    Path(os.environ[FAULTS_ENV]).unlink(missing_ok=True)


@pytest.fixture
def stall_after(tmp_path: Path) -> Iterator[Callable[[int, float], Path]]:
    """``stall_after(n, s)``: the first process past a checkpoint at step >= n sleeps ``s`` seconds, once."""
    yield lambda step, seconds: _arm(tmp_path, "stall_after_step", step, seconds)
    Path(os.environ[FAULTS_ENV]).unlink(missing_ok=True)


@pytest.fixture
def stall_final_report(tmp_path: Path) -> Iterator[Callable[[float], Path]]:
    """``stall_final_report(s)``: the first study trial whose run holds its final result sleeps ``s``
    seconds before reporting it to Tune."""
    yield lambda seconds: _arm(tmp_path, "stall_before_final_report", seconds=seconds)
    Path(os.environ[FAULTS_ENV]).unlink(missing_ok=True)


def write_tiny_kg(folder: Path, seed: int = 0) -> Path:
    """A TSV KG with learnable structure: people live in, and were born in, one of a few cities.

    valid and test repeat training triples, so they measure how well training fits the graph.
    """
    rng = np.random.default_rng(seed)
    # Few syllables: many names share tokens, so token-level predictions alone confuse entities.
    people = sorted({" ".join(rng.choice(SYLLABLES[:5], 3)).title().replace(" ", "") for _ in range(200)})[:48]
    cities = [f"City of {s.title()}" for s in SYLLABLES[6:9]]
    triples = []
    for i, person in enumerate(people):
        city = cities[i % len(cities)]
        triples += [(person, "livesIn", city), (person, "bornIn", city)]
        triples.append((person, "friendOf", people[(i * 7 + 3) % len(people)]))
    order = rng.permutation(len(triples))
    triples = [triples[i] for i in order]
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(t) for t in triples]
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    (folder / "valid.tsv").write_text("\n".join(lines[:40]) + "\n")
    (folder / "test.tsv").write_text("\n".join(lines[40:100]) + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_kg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_kg(tmp_path_factory.mktemp("kg") / "tiny")


def tiny_config(dataset: Path, *overrides: str) -> RunConfig:
    """A K-ON small enough to train in seconds on a CPU."""
    return apply_overrides(
        RunConfig(),
        [
            f"data.dataset={dataset}",
            "data.valid_limit=none",
            "data.valid_unseen=false",  # valid repeats training triples
            "model.k=4",
            "model.attention_heads=4",
            "model.embedded.hidden_size=64",
            "model.embedded.layers=2",
            "model.embedded.heads=4",
            "model.embedded.intermediate_size=128",
            "model.embedded.vocab_size=400",
            "loss.negatives=16",
            "train.micro_batch=16",
            "train.grad_accum=1",
            "train.lr=3e-3",
            "train.warmup_steps=10",
            "train.epochs=40",
            "train.threads=1",
            *overrides,
        ],
    )


@pytest.fixture(scope="session")
def backbones(tiny_kg: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``backbones(family)``: a tiny ``save_pretrained`` folder of that family (``tests.backbones``
    FAMILIES: llama, gpt2, qwen2) with a tokenizer trained on the tiny KG, written once a session."""
    from tests.backbones import write_backbone

    root = tmp_path_factory.mktemp("backbones")
    written: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in written:
            written[family] = write_backbone(family, tiny_kg, root / family)
        return written[family]

    return get


def backbone_config(dataset: Path, backbone: Path, *overrides: str) -> RunConfig:
    """``tiny_config`` on a saved backbone: LoRA (tuning 'auto'), a few steps."""
    return tiny_config(
        dataset, f"model.backbone={backbone}", "train.lr=1e-2", "train.max_steps=12",
        "train.evals_per_epoch=4", "train.warmup_steps=2", *overrides,
    )


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of the event files in ``folder``, tag -> [(step, value)], read back from
    their TFRecord framing (length, its CRC, an ``Event`` proto, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (length,) = struct.unpack("<Q", data[i : i + 8])
            event = Event.FromString(data[i + 12 : i + 12 + length])
            i += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars
