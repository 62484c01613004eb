"""One parser and one coercer for run configs, study files and benchmark settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from kon_ray.config import ConfigError
from kon_ray.overrides import coerce, parse_overrides, split_dotted
from kon_ray.studies import check_study, load_study


def test_parse_and_split() -> None:
    pairs = parse_overrides(["steps=5", " model.k = 4 ", "data.dataset=a=b"])
    assert pairs == {"steps": "5", "model.k": "4", "data.dataset": "a=b"}
    assert split_dotted(pairs) == ({"steps": "5"}, {"model.k": "4", "data.dataset": "a=b"})
    for bad in ("model.k", "=4"):
        with pytest.raises(ConfigError, match="expected key=value"):
            parse_overrides([bad])


@pytest.mark.parametrize(
    ("hint", "text", "value"),
    [
        (int, "4", 4), (float, "1e-4", 1e-4), (bool, "yes", True), (bool, "0", False),
        (int | None, "none", None), (tuple[int, ...], "16, 64,", (16, 64)), (tuple[str, ...], "q,v", ("q", "v")),
    ],
)  # fmt: skip
def test_coerce(hint: object, text: str, value: object) -> None:
    assert coerce("x", hint, text) == value


@pytest.mark.parametrize(
    ("hint", "value", "message"),
    [
        (float, "inf", "x='inf': must be a finite number"), (float | None, "-inf", "must be a finite number"),
        (int, "nan", "must be a finite number"), (tuple[int, ...], "1,inf", "must be a finite number"),
        (int, "2.5", "expected an integer"), (int, True, "expected an integer"), (bool, "maybe", "true or false"),
        (int, "none", "expected an integer"), (str, None, "this field needs a value"),
    ],
)  # fmt: skip
def test_coerce_refuses(hint: object, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        coerce("x", hint, value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('study = Study(name="x", seeds=(-1,))', r"s\.py: seeds=\(-1,\): each train\.seed must be an integer >= 0"),
        ('study = Study(name="x", base={"train.lr": float("inf")})', r"s\.py: base: train\.lr=inf: must be a finite number"),
        ('study = Study(name="x", grid={"train.epochs": [1, float("nan")]})', r"train\.epochs=nan: must be a finite"),
    ],
)
def test_study_files_go_through_the_same_coercer(tiny_kg: Path, tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "s.py"
    path.write_text(f"from kon_ray.studies import Study\n\n{body}\n")
    with pytest.raises(ConfigError, match=message):
        check_study(load_study(path), path, {"data.dataset": str(tiny_kg), "loss.negatives": 8, "data.valid_unseen": False})
