"""Field metadata holds each help; `kon-ray config` prints it; docs/configuration.md is current."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kon_ray.cli import main
from kon_ray.config import ConfigError, RunConfig, apply_overrides, flatten
from kon_ray.settings import NO_PAPER, settings, settings_markdown
from kon_ray.studies import load_study

ROOT = Path(__file__).resolve().parents[1]
MEASURED = re.compile(r"\d(\.\d+)?x\b|\d%|faster|slower|\bms\b|\d s\b")


def test_every_setting_has_help_and_no_measurement() -> None:
    found = settings()
    assert [s.key for s in found] == [k for k, _ in flatten(RunConfig().to_dict())]
    for s in found:
        assert len(s.help) > 10, s.key
        assert not MEASURED.search(s.help), f"{s.key}: measurements belong in docs/: {s.help}"


def test_paper_values_differ_from_ours_and_are_valid() -> None:
    with_paper = {s.key: s.paper for s in settings() if s.paper is not NO_PAPER}
    assert {"model.backbone", "train.lr", "train.micro_batch", "train.grad_accum"} <= set(with_paper)
    defaults = dict(flatten(RunConfig().to_dict()))
    assert all(defaults[k] != v for k, v in with_paper.items())
    apply_overrides(RunConfig(), with_paper)  # the paper's settings together make a valid config
    paper_study = load_study(ROOT / "studies" / "paper.py")
    for key, value in paper_study.base.items():
        assert with_paper.get(key, value) == value, key  # the paper study and the metadata agree


def test_config_command_prints_a_section(capsys: pytest.CaptureFixture[str]) -> None:
    main(["config", "model.embedded"])
    out = capsys.readouterr().out
    assert out.startswith("model.embedded.hidden_size: int = 128\n    Hidden size")
    assert out.count("\n    ") == 5 and "model.k" not in out
    main(["config", "train.lr"])
    assert capsys.readouterr().out.splitlines()[-1] == "    paper: 0.0001"
    with pytest.raises(SystemExit) as exit_info:
        main(["config", "modle"])
    assert exit_info.value.code == 2 and "sections: data, eval, loss, model," in capsys.readouterr().err
    with pytest.raises(ConfigError):
        settings("model.kk")


def test_configuration_docs_are_current() -> None:
    """Regenerate with: python -m kon_ray.cli config --markdown > docs/configuration.md"""
    assert (ROOT / "docs" / "configuration.md").read_text() == settings_markdown()
