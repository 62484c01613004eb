"""What a large or long-named KG needs: the anchor-name cap in training, memory that grows
linearly with the entities, and the ``bench scale`` record."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kon_ray.training import setup
from tests.conftest import tiny_config


def test_training_caps_the_anchor_name_at_data_anchor_tokens(tiny_kg: Path) -> None:
    default, capped = (setup(tiny_config(tiny_kg, *cap)).encoded for cap in ([], ["data.anchor_tokens=2"]))
    assert np.array_equal(default.prompt_keys, capped.prompt_keys)
    long = default.name_lengths[default.prompt_keys % default.num_entities] > 2
    before, after = np.diff(default.prompt_offsets), np.diff(capped.prompt_offsets)
    assert long.any() and after[long].sum() < before[long].sum()  # the long anchors' prompts are shorter
    assert np.array_equal(after[~long], before[~long])  # the short ones untouched
    assert capped.capped_prompts(2) == long.sum() and default.capped_prompts(48) == 0
