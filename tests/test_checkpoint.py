"""Checkpoints without Ray: written atomically beside the previous one, checked at start, and
resumed only by the same run (settings, data, tokenizer, backbone)."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kon_ray import checkpoint
from kon_ray.backbone import tokenizer_identity
from kon_ray.config import ConfigError
from kon_ray.data.tokenizer import train_tokenizer
from kon_ray.results import provenance
from kon_ray.run_identity import RunIdentity, check_same_run
from kon_ray.training import run
from tests.conftest import tiny_config

# Validation (and a checkpoint) every 2 steps of the tiny KG's 18 steps per epoch.
SHORT = ("train.max_steps=6", "train.evals_per_epoch=9")


def losses(metrics: dict[str, Any]) -> list[float]:
    return [h["train.loss"] for h in metrics["history"]]


@pytest.fixture(scope="module")
def whole(tiny_kg: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The uninterrupted run every resumed one must match."""
    return run(tiny_config(tiny_kg, *SHORT), tmp_path_factory.mktemp("whole") / "run")


def test_each_checkpoint_is_renamed_into_place_and_the_previous_one_kept(
    whole: dict[str, Any], tiny_kg: Path, tmp_path: Path
) -> None:
    run(tiny_config(tiny_kg, *SHORT), tmp_path)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint-00000004", "checkpoint-00000006", "latest"]
    assert (root / "latest").read_text().strip() == "checkpoint-00000006"
    manifest = json.loads((root / "checkpoint-00000006" / "manifest-0.json").read_text())
    assert {"weights.safetensors", "best.safetensors", "state.json"} <= set(manifest)
    assert any(name.startswith("optimizer/") for name in manifest)


def test_killed_while_writing_resumes_from_the_previous_checkpoint(
    whole: dict[str, Any], tiny_kg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill half-way through the weights of step 4: step 2's checkpoint is still the latest."""
    save_file = checkpoint.save_file

    def killed(tensors: dict[str, Any], filename: str) -> None:
        if "00000004" in filename:
            save_file(tensors, filename)
            with open(filename, "r+b") as f:
                f.truncate(100)
            raise KeyboardInterrupt("killed while writing")
        save_file(tensors, filename)

    monkeypatch.setattr(checkpoint, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tiny_kg, *SHORT), tmp_path)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "checkpoint-00000002"
    assert (root / ".checkpoint-00000004.partial").is_dir()
    monkeypatch.setattr(checkpoint, "save_file", save_file)
    resumed = run(tiny_config(tiny_kg, *SHORT), tmp_path)
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    assert resumed["test.mrr"] == pytest.approx(whole["test.mrr"], abs=1e-6)
    assert not (root / ".checkpoint-00000004.partial").exists()


def test_truncated_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    whole: dict[str, Any], tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashed = crash_after(4)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tiny_config(tiny_kg, *SHORT), tmp_path)
    assert crashed.exists()
    weights = tmp_path / "checkpoints" / "checkpoint-00000004" / "weights.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="kon_ray.checkpoint"):
        resumed = run(tiny_config(tiny_kg, *SHORT), tmp_path)
    warning = next(r.getMessage() for r in caplog.records if "truncated or changed" in r.getMessage())
    assert str(weights) in warning and "checkpoint-00000002" in warning
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    assert resumed["test.mrr"] == pytest.approx(whole["test.mrr"], abs=1e-6)


def test_broken_checkpoint_without_a_fallback_is_one_line_naming_the_file(
    tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    crash_after(2)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tiny_config(tiny_kg, *SHORT), tmp_path)
    weights = tmp_path / "checkpoints" / "checkpoint-00000002" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # same size, other bytes
    with pytest.raises(ConfigError, match="no earlier complete checkpoint") as error:
        run(tiny_config(tiny_kg, *SHORT), tmp_path)
    assert str(weights) in str(error.value) and "corrupt" in str(error.value)
    assert "\n" not in str(error.value)


def test_resume_on_other_data_is_refused_naming_both_hashes(
    tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    kg = shutil.copytree(tiny_kg, tmp_path / "kg")
    crash_after(2)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tiny_config(kg, *SHORT), tmp_path / "run")
    state = json.loads((tmp_path / "run" / "checkpoints" / "checkpoint-00000002" / "state.json").read_text())
    before = state["identity"]["data_hash"]
    with (kg / "train.tsv").open("a") as f:
        f.write("Kalomi\tfriendOf\tCity of Vi\n")
    with pytest.raises(ConfigError, match=f"data hash {before} -> (?!{before})[0-9a-f]{{64}}"):
        run(tiny_config(kg, *SHORT), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_resumed_metrics_carry_the_checkpoint_data_hash(
    whole: dict[str, Any], tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    crash_after(2)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(tiny_config(tiny_kg, *SHORT), tmp_path)
    resumed = run(tiny_config(tiny_kg, *SHORT), tmp_path)
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-00000006" / "state.json").read_text())
    assert resumed["data_hash"] == state["identity"]["data_hash"] == whole["data_hash"]


def identity(**changes: Any) -> RunIdentity:
    values = {
        "data_hash": "d" * 64,
        "tokenizer": {"name": "tok", "hash": "t" * 64},
        "backbone": {"name": "embedded", "hash": "b" * 64},
    }
    return RunIdentity.from_dict({**values, **changes})


@pytest.mark.parametrize(
    ("what", "change"),
    [("tokenizer", {"name": "tok", "hash": "u" * 64}), ("backbone", {"name": "embedded", "hash": "c" * 64})],
)
def test_another_tokenizer_or_backbone_is_refused(tmp_path: Path, what: str, change: dict[str, str]) -> None:
    config = tiny_config(tmp_path).to_dict()
    (tmp_path / "state.json").write_text(
        json.dumps({"config": config, "identity": vars(identity()), "provenance": provenance()})
    )
    check_same_run(tmp_path, config, identity())
    with pytest.raises(ConfigError, match=f"{what} .*hash {change['hash'][:16]}"):
        check_same_run(tmp_path, config, identity(**{what: change}))


def test_other_code_or_library_versions_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tiny_config(tmp_path).to_dict()
    now = provenance()
    versions = {**now["versions"], "torch": "1.0"}
    old = {**now, "git": {"commit": "0" * 40, "dirty": False}, "versions": versions}
    state = {"config": config, "identity": vars(identity()), "provenance": old}
    (tmp_path / "state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING, logger="kon_ray.run_identity"):
        check_same_run(tmp_path, config, identity())
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert f"written at commit {'0' * 40}" in messages and "torch 1.0 when written" in messages


def test_tokenizer_identity_follows_its_contents_not_its_folder(tmp_path: Path) -> None:
    tokenizer = train_tokenizer(["ka lo mi ne su ta"] * 10, 300)
    tokenizer.save_pretrained(tmp_path / "a")
    from transformers import PreTrainedTokenizerFast

    reloaded = PreTrainedTokenizerFast.from_pretrained(tmp_path / "a")
    reloaded(["ka lo", "mi"], padding=True, truncation=True, max_length=4)  # sets backend padding state
    assert tokenizer_identity(reloaded)["hash"] == tokenizer_identity(tokenizer)["hash"]
    other = train_tokenizer(["ka lo mi ne su ta vi"] * 10, 300)
    assert tokenizer_identity(other)["hash"] != tokenizer_identity(tokenizer)["hash"]


def test_backbone_identity_follows_the_weights_of_a_saved_model(tiny_kg: Path, tmp_path: Path) -> None:
    from kon_ray.backbone import backbone_identity
    from kon_ray.config import ModelConfig
    from tests.backbones import write_backbone

    def identity(seed: int) -> dict[str, str]:
        folder = write_backbone("llama", tiny_kg, tmp_path / "b", seed)
        return backbone_identity(ModelConfig(backbone=str(folder)))

    first, again, other = identity(0), identity(0), identity(1)
    assert first == again and other["hash"] != first["hash"]


def test_resume_with_another_backbone_in_the_same_folder_is_refused(
    tiny_kg: Path, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    """A backbone folder saved again with other weights is another backbone, whatever its name."""
    from tests.backbones import write_backbone
    from tests.conftest import backbone_config

    base = write_backbone("llama", tiny_kg, tmp_path / "llama", seed=0)
    config = backbone_config(tiny_kg, base, *SHORT)
    crash_after(2)
    with pytest.raises(RuntimeError, match="injected crash"):
        run(config, tmp_path / "run")
    write_backbone("llama", tiny_kg, base, seed=1)
    with pytest.raises(ConfigError, match=f"backbone {base} \\(hash [0-9a-f]{{16}}\\) -> {base} \\(hash"):
        run(config, tmp_path / "run")
