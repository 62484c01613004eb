"""A study: the base config, what varies (a grid, named variants or an Optuna space), seeds, budget.

A study file (``studies/*.py``) exports one ``study = Study(...)``. ``load_study`` imports it and
``check_study`` builds every config it can produce, so that a typo fails before Ray starts.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.overrides import check as _check
from kon_ray.paper import ANALYSES, PaperValues, Published

SCHEDULERS = ("asha",)
RANKING = ("mrr", "hits@1", "hits@3", "hits@10")
STUDY_METRICS = tuple(f"valid.{direction}{m}" for direction in ("", "tail.", "head.") for m in RANKING)
"""What a study may rank its trials by: the validation metrics that every trial reports."""
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class IntRange:
    """Integers from ``low`` to ``high``, both included; ``log`` samples on a log scale."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low <= self.high:
            raise ConfigError(f"IntRange(low={self.low}, high={self.high}): needs low <= high")
        if self.log and self.low < 1:
            raise ConfigError(f"IntRange(low={self.low}, log=True): a log scale needs low >= 1")

    @property
    def endpoints(self) -> tuple[int, ...]:
        return (self.low, self.high)


@dataclass(frozen=True)
class FloatRange:
    """Reals from ``low`` to ``high``; ``log`` samples on a log scale."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ConfigError(f"FloatRange(low={self.low}, high={self.high}): needs low < high")
        if self.log and self.low <= 0:
            raise ConfigError(f"FloatRange(low={self.low}, log=True): a log scale needs low > 0")

    @property
    def endpoints(self) -> tuple[float, ...]:
        return (self.low, self.high)


@dataclass(frozen=True)
class Choice:
    """One of ``values`` (numbers, strings or booleans)."""

    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ConfigError("Choice(values=()): give at least one value")

    @property
    def endpoints(self) -> tuple[Any, ...]:
        return self.values


Param = IntRange | FloatRange | Choice


@dataclass(frozen=True)
class Study:
    name: str
    """Names the experiment folder ``<storage>/<name>`` and the Optuna study."""
    base: Mapping[str, Any] = field(default_factory=dict)
    """Dotted overrides of the defaults shared by every trial, e.g. {"model.k": 8}."""
    grid: Mapping[str, Sequence[Any]] | None = None
    """Values per dotted key; every point of their cartesian product runs once per seed."""
    variants: Mapping[str, Mapping[str, Any]] | None = None
    """Named override sets (ablations), crossed with the grid; recorded as ``config.variant``."""
    space: Mapping[str, Param] | None = None
    """An Optuna (TPE) search space by dotted key; excludes grid and variants."""
    seeds: tuple[int, ...] = (0,)
    """``train.seed`` of each replicate; a search space takes one."""
    metric: str = "valid.mrr"
    """What the search and the 'best so far' rank by; never a test metric."""
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = 4
    """Upper bound; capped further by what the cluster can hold at once."""
    num_samples: int = 1
    """Trials an Optuna search runs (a grid runs each point x seed once)."""
    time_budget_minutes: float | None = None
    """Stop starting and running trials after this long; None: no limit."""
    scheduler: str | None = None
    """'asha' stops poor trials early on their validation reports; None: run every trial to the end."""
    max_retries: int = 1
    """Restarts of a failed trial (from its latest checkpoint) before it is recorded as an error."""
    analyses: tuple[str, ...] = ()
    """The report's figures and tables for this study, by name (``kon_ray.paper.ANALYSES``), e.g.
    ("heads_curve",); the report draws only these."""
    paper: Published | None = None
    """The paper's published numbers for this study (from kon_ray.paper; by dataset for Table 2), shown
    beside the reproduced ones instead of each analysis's own; None: the analyses' own."""

    def __post_init__(self) -> None:
        for name in ("base", "grid", "variants", "space"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, dict(value))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "analyses", tuple(self.analyses))
        _check(
            isinstance(self.name, str) and PLAIN_NAME.fullmatch(self.name) is not None,
            f"name={self.name!r}: must be a plain name: letters, digits, '_', '-' and '.', not first",
        )
        if self.grid is not None:
            _check(bool(self.grid), "grid={}: empty grid; give at least one key and its values")
            for key, values in self.grid.items():
                _check(
                    not isinstance(values, str | bytes) and len(values) > 0,
                    f"grid[{key!r}]={values!r}: must be a non-empty list of values",
                )
        if self.variants is not None:
            _check(bool(self.variants), "variants={}: empty; give at least one named variant")
        if self.space is not None:
            _check(bool(self.space), "space={}: empty search space; give at least one parameter")
            _check(
                self.grid is None and self.variants is None,
                "space: a search space excludes grid and variants; make it a separate study",
            )
            for key, param in self.space.items():
                _check(
                    isinstance(param, IntRange | FloatRange | Choice),
                    f"space[{key!r}]={param!r}: must be IntRange, FloatRange or Choice",
                )
            _check(len(self.seeds) == 1, f"seeds={self.seeds}: a search space takes exactly one seed")
        _check(len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds), f"seeds={self.seeds}: must be distinct, >= 1")
        _check(
            all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in self.seeds),
            f"seeds={self.seeds}: each train.seed must be an integer >= 0",
        )
        _check(
            not self.metric.startswith("test."),
            f"metric={self.metric!r}: never tune on the test split; use a 'valid.' metric",
        )
        _check(
            self.metric in STUDY_METRICS,
            f"metric={self.metric!r}: trials report no such metric; one of {', '.join(STUDY_METRICS)}",
        )
        _check(self.mode in ("max", "min"), f"mode={self.mode!r}: must be 'max' or 'min'")
        _check(self.max_concurrent_trials >= 1, f"max_concurrent_trials={self.max_concurrent_trials}: must be >= 1")
        _check(self.num_samples >= 1, f"num_samples={self.num_samples}: must be >= 1")
        _check(
            self.space is not None or self.num_samples == 1,
            f"num_samples={self.num_samples}: only a search space samples; a grid runs each point once per seed",
        )
        _check(
            self.time_budget_minutes is None or self.time_budget_minutes > 0,
            f"time_budget_minutes={self.time_budget_minutes}: must be > 0 or None",
        )
        _check(
            self.scheduler is None or self.scheduler in SCHEDULERS,
            f"scheduler={self.scheduler!r}: must be one of {SCHEDULERS} or None",
        )
        _check(self.max_retries >= 0, f"max_retries={self.max_retries}: must be >= 0")
        for name in self.analyses:
            _check(name in ANALYSES, f"analyses: {name!r} is not an analysis; valid: {', '.join(ANALYSES)}")
        by_dataset = isinstance(self.paper, Mapping) and all(isinstance(v, PaperValues) for v in self.paper.values())
        _check(
            self.paper is None or isinstance(self.paper, PaperValues) or by_dataset,
            "paper: must be a kon_ray.paper value (e.g. TABLE3), a mapping of them by dataset (TABLE2), or None",
        )

    @property
    def varied(self) -> tuple[str, ...]:
        """The dotted keys that differ between trials."""
        keys = list(self.grid or {}) + list(self.space or {})
        keys += sorted({k for overrides in (self.variants or {}).values() for k in overrides} - set(keys))
        return tuple(keys)

    def points(self) -> Iterator[dict[str, Any]]:
        """Every grid point x variant, as trial parameters (``variant`` names the variant)."""
        grid = self.grid or {}
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values, strict=True))
            for variant in self.variants or [None]:
                yield point if variant is None else {**point, "variant": variant}

    def overrides(self, params: Mapping[str, Any], extra: Mapping[str, Any] = {}) -> dict[str, Any]:  # noqa: B006
        """Dotted overrides of one trial: base, then its variant, its point, then ``extra``."""
        return trial_overrides(self.base, self.variants or {}, params, extra)


def trial_overrides(
    base: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]], params: Mapping[str, Any], extra: Mapping[str, Any]
) -> dict[str, Any]:
    """Base, then the trial's variant, its varied values and seed (``params``), then ``extra``."""
    values = {k: v for k, v in params.items() if k not in ("variant", "seed")}
    seed = {"train.seed": params["seed"]} if "seed" in params else {}
    return {**base, **variants.get(params.get("variant"), {}), **values, **seed, **extra}


def load_study(path: str | Path) -> Study:
    """Import a study file and return its ``study``; a bad or missing one names the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such study file")
    spec = importlib.util.spec_from_file_location(f"kon_ray_study_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except SyntaxError as error:
        raise ConfigError(f"{path}:{error.lineno}: {type(error).__name__}: {error.msg}") from None
    except Exception as error:  # the study file is code: name its line that failed
        frames = traceback.extract_tb(sys.exc_info()[2])
        lines = [frame.lineno for frame in frames if frame.filename == str(path)]
        where = f"{path}:{lines[-1]}" if lines else str(path)
        raise ConfigError(f"{where}: {type(error).__name__}: {error}") from None
    study = getattr(module, "study", None)
    if not isinstance(study, Study):
        raise ConfigError(f"{path}: exports no `study = Study(...)` (found {type(study).__name__})")
    return study


def check_study(study: Study, source: str | Path, extra: Mapping[str, Any] = {}) -> list[RunConfig]:  # noqa: B006
    """Build every config ``study`` can produce (search-space endpoints) with ``extra`` on top,
    and check each against its KG; errors name ``source`` and the study field. No model is loaded."""
    from kon_ray.data import KGFormatError, check_data, load_kg

    clash = sorted(set(extra) & set(study.varied))
    _check(not clash, f"{source}: overrides {clash} set keys the study varies; drop them")
    cases: list[tuple[str, dict[str, Any]]] = [("base", {})]
    if study.space is None:
        cases = [(_where(params), params) for params in study.points()]
    else:
        cases += [(f"space[{key!r}] at {value!r}", {key: value}) for key, p in study.space.items() for value in p.endpoints]
    configs: list[RunConfig] = []
    kgs: dict[tuple[str, int | None], Any] = {}
    for where, params in cases:
        for seed in study.seeds:
            try:
                config = apply_overrides(RunConfig(), study.overrides({**params, "seed": seed}, extra))
                key = (config.data.dataset, config.data.train_limit)
                if key not in kgs:
                    kgs[key] = load_kg(config.data.dataset).slice(config.data.train_limit)
                check_data(config, kgs[key])
            except (ConfigError, KGFormatError, OSError) as error:
                raise ConfigError(f"{source}: {where}: {error}") from None
            configs.append(config)
    return configs


def _where(params: Mapping[str, Any]) -> str:
    variant = params.get("variant")
    point = {k: v for k, v in params.items() if k != "variant"}
    parts = [f"grid point {point}"] if point else []
    parts += [f"variant {variant!r}"] if variant is not None else []
    return ", ".join(parts) or "base"


def trial_count(study: Study) -> int:
    """Trials the study runs (a search space: its sample budget)."""
    if study.space is not None:
        return study.num_samples
    return math.prod(len(v) for v in (study.grid or {}).values()) * len(study.variants or [None]) * len(study.seeds)
