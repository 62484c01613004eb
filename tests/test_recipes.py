"""CONTRIBUTING.md's recipes stay true: each excerpt is in the file it names, the dataset example
loads, and every registered contrastive loss behaves as a loss."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kon_ray.config import LossConfig, RunConfig, apply_overrides
from kon_ray.data import load_kg
from kon_ray.losses import CONTRASTIVE

ROOT = Path(__file__).resolve().parents[1]
GUIDE = (ROOT / "CONTRIBUTING.md").read_text()
BLOCK = re.compile(r"<!-- (excerpt|example-file): (\S+) -->\n\s*```\w*\n(.*?)\n\s*```", re.S)
BLOCKS = BLOCK.findall(GUIDE)
EXCERPTS = [(path, code) for kind, path, code in BLOCKS if kind == "excerpt"]


def test_every_recipe_is_there_with_at_most_three_files() -> None:
    recipes = re.split(r"^## ", GUIDE, flags=re.M)[1:]
    titles = [r.splitlines()[0] for r in recipes]
    assert titles[:4] == ["Add a contrastive loss", "Add a figure or table to the report", "Add a study",
                          "Add a dataset"] and "Mutation testing" in titles  # fmt: skip
    for recipe in recipes[:3]:
        steps = re.findall(r"^\d\. `([^`]+)`", recipe, flags=re.M)
        assert 1 <= len(steps) <= 3, (recipe.splitlines()[0], steps)
    assert len(EXCERPTS) >= 6


@pytest.mark.parametrize(("path", "code"), EXCERPTS, ids=[p for p, _ in EXCERPTS])
def test_excerpt_is_in_its_file(path: str, code: str) -> None:
    """The excerpt's lines (indentation aside) appear one after another in the file."""
    lines = [line.strip() for line in code.splitlines()]
    source = [line.strip() for line in (ROOT / path).read_text().splitlines()]
    found = any(source[i : i + len(lines)] == lines for i in range(len(source)))
    assert found, f"{path} no longer holds:\n{code}"


def test_dataset_example_loads(tmp_path: Path) -> None:
    files = {name: code for kind, name, code in BLOCKS if kind == "example-file"}
    assert set(files) == {"train.tsv", "valid.tsv", "test.tsv"}
    for name, code in files.items():
        (tmp_path / name).write_text("\n".join(line.strip() for line in code.splitlines()) + "\n")
    kg = load_kg(str(tmp_path))
    assert (kg.num_entities, kg.num_relations, len(kg.train), len(kg.valid), len(kg.test)) == (7, 2, 4, 1, 1)
    assert apply_overrides(RunConfig(), {"data.dataset": str(tmp_path)}).data.dataset == str(tmp_path)


@pytest.mark.parametrize("name", sorted(CONTRASTIVE))
@pytest.mark.parametrize("probability", [True, False])
def test_every_contrastive_loss_rewards_the_positive(name: str, probability: bool) -> None:
    """Finite, lower when the positive scores higher and when a negative scores lower."""
    torch.manual_seed(0)
    pos, neg = torch.randn(6) - 1.0, torch.randn(6, 5) - 1.0
    if probability:  # scores are log p < 0
        pos, neg = F.logsigmoid(pos), F.logsigmoid(neg)
    pos, neg = pos.requires_grad_(), neg.requires_grad_()
    loss = CONTRASTIVE[name](pos, neg, LossConfig(contrastive=name), probability)  # type: ignore[arg-type]
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert (pos.grad < 0).all() and (neg.grad >= 0).all() and (neg.grad > 0).any()
