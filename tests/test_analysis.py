"""The numbers behind the figures and tables, from hand-built result tables with known values."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import pytest

from analysis import figures as F
from analysis.hpo import hpo_views
from analysis.plots import export_images, heads_figure, negatives_figure
from analysis.registry import REGISTRY
from analysis.report import StudyInfo, build_report, partial_banner, status_counts
from analysis.stats import summarize, t_quantile
from kon_ray.config import ConfigError
from kon_ray.paper import (
    ANALYSES, FIGURE3, FIGURE4, METRICS, TABLE2, TABLE3, TABLE4, PaperValues, published_from_json, published_to_json,
)  # fmt: skip
from kon_ray.studies import Study, load_study

ROOT = Path(__file__).resolve().parents[1]

# t(0.975, df) from statistical tables (scipy.stats.t.ppf(0.975, df)).
T975 = {1: 12.706204736174707, 2: 4.302652729749464, 3: 3.182446305284263, 4: 2.7764451051977934,
        10: 2.2281388519649385, 30: 2.0422724563012373}  # fmt: skip


def trial(i: int, seed: int = 0, status: str = "TERMINATED", mrr: float = 0.3, error: str | None = None, **config: object) -> dict:
    """One result row; hits@k are offsets of MRR so every metric has a known value."""
    row = {"study": "s", "trial_id": f"t{i}", "status": status, "seed": seed, "error": error,
           "config.model.backbone": "tiny-llama", "config.data.dataset": "DB15K",
           "trainable_params": 1000, "step_time_s": 0.5, "train_time_s": 100.0, "device_hours": 0.1,
           "git_commit": "abc123", "git_dirty": False, "versions": '{"torch": "2.4.1", "optuna": "5.0.0"}',
           "data_hash": "d41d8", "hardware": "8xA100", "started": "2025-01-01T00:00:00+00:00",
           "ended": "2025-01-01T01:00:00+00:00"}  # fmt: skip
    row |= {f"config.{k.replace('__', '.')}": v for k, v in config.items()}
    for split in ("valid", "test"):
        row |= {f"{split}.mrr": mrr, f"{split}.hits@1": mrr - 0.1, f"{split}.hits@3": mrr + 0.05, f"{split}.hits@10": mrr + 0.2}
    return row


@pytest.fixture
def heads_table() -> pd.DataFrame:
    """K in {1, 2, 4} with 3 seeds each, K = 8 with one seed, plus failed/pruned/running trials at K = 4."""
    rows, i = [], 0
    mrrs = {1: (0.20, 0.22, 0.24), 2: (0.30, 0.30, 0.33), 4: (0.36, 0.38, 0.40), 8: (0.39,)}
    for k, values in mrrs.items():
        for seed, mrr in enumerate(values):
            rows.append(trial(i := i + 1, seed, mrr=mrr, model__k=k) | {"trainable_params": 1000 * k, "step_time_s": 0.1 * k + seed * 0.01})
    rows.append(trial(i := i + 1, 3, "ERROR", mrr=math.nan, error="CUDA out of memory", model__k=4))
    rows.append(trial(i := i + 1, 4, "PRUNED", mrr=0.99, model__k=4))
    rows.append(trial(i + 1, 5, "RUNNING", mrr=math.nan, model__k=16))
    return pd.DataFrame(rows)


def test_t_quantile_matches_tables() -> None:
    for df, expected in T975.items():
        assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-9)
    assert t_quantile(0.995, 2) == pytest.approx(9.924843200918279, rel=1e-9)
    with pytest.raises(ValueError, match="df=0"):
        t_quantile(0.975, 0)


def test_summarize_hand_computed() -> None:
    s = summarize([30.0, 32.0, 34.0])  # mean 32, sample sd 2
    assert (s.mean, s.n) == (32.0, 3)
    assert s.half_width == pytest.approx(4.302652729749464 * 2 / math.sqrt(3))  # 4.9683
    assert s.half_width == pytest.approx(4.9683, abs=1e-4)
    one = summarize([5.0, math.nan])
    assert (one.mean, one.n) == (5.0, 1) and math.isnan(one.half_width)
    assert summarize([]).n == 0


def test_heads_curve(heads_table: pd.DataFrame) -> None:
    curve = F.heads_curve(heads_table).set_index("k")
    assert curve.index.tolist() == [1, 2, 4, 8]  # K = 16 is only running
    assert curve["n"].tolist() == [3, 3, 3, 1]  # failed and pruned trials at K = 4 are left out
    assert curve.loc[1, "mrr_mean"] == pytest.approx(22.0)
    assert curve.loc[1, "mrr_ci"] == pytest.approx(T975[2] * 2 / math.sqrt(3))
    assert curve.loc[2, "mrr_mean"] == pytest.approx(31.0)
    assert curve.loc[2, "mrr_ci"] == pytest.approx(T975[2] * math.sqrt(3) / math.sqrt(3))  # sd of 30,30,33 is sqrt(3)
    assert curve.loc[4, "mrr_low"] == pytest.approx(38.0 - T975[2] * 2 / math.sqrt(3))
    assert curve.loc[8, "mrr_mean"] == pytest.approx(39.0) and math.isnan(curve.loc[8, "mrr_ci"])
    assert curve.loc[4, "trainable_params"] == 4000
    assert curve.loc[2, "step_time_s"] == pytest.approx(0.21)
    assert curve.loc[2, "train_time_s"] == pytest.approx(100.0)


def test_negatives_curve() -> None:
    rows = [trial(i, i % 2, mrr=0.30 + 0.02 * (i % 2), loss__negatives=n) for i, n in enumerate([16, 16, 128, 128])]
    curve = F.negatives_curve(pd.DataFrame(rows)).set_index("negatives")
    assert curve.index.tolist() == [16, 128] and curve["n"].tolist() == [2, 2]
    half = T975[1] * math.sqrt(2) / math.sqrt(2)  # sd of (30, 32) is sqrt(2)
    for metric, offset in (("mrr", 0), ("hits@1", -10), ("hits@3", 5), ("hits@10", 20)):
        assert curve.loc[16, f"{metric}_mean"] == pytest.approx(31.0 + offset)
        assert curve.loc[128, f"{metric}_ci"] == pytest.approx(half)


def _cell(frame: pd.DataFrame, row: str, metric: str) -> pd.Series:
    return frame[(frame["row"] == row) & (frame["metric"] == metric)].iloc[0]


def test_joint_probability_table() -> None:
    rows = [trial(0, 0, mrr=0.38, model__joint="sum", model__joint_weights="learnable"),
            trial(1, 1, mrr=0.40, model__joint="sum", model__joint_weights="learnable"),
            trial(2, 0, mrr=0.23, model__joint="product", model__joint_weights="constant"),
            trial(3, 1, "ERROR", mrr=math.nan, error="nan loss", model__joint="sum", model__joint_weights="constant")]  # fmt: skip
    frame = F.joint_probability_table(pd.DataFrame(rows), TABLE4)
    assert frame["row"].unique().tolist() == ["+ learnable", "+ constant", "* learnable", "* constant"]
    plus = _cell(frame, "+ learnable", "mrr")
    assert (plus["n"], plus["reproduced"], plus["paper"]) == (2, pytest.approx(39.0), 38.10)
    assert plus["ci"] == pytest.approx(T975[1] * math.sqrt(2) / math.sqrt(2))
    assert plus["difference"] == pytest.approx(0.90)
    hits = _cell(frame, "* constant", "hits@10")
    assert hits["reproduced"] == pytest.approx(43.0) and hits["difference"] == pytest.approx(43.0 - 37.93)
    missing = _cell(frame, "+ constant", "mrr")  # only an errored trial: paper shown, nothing reproduced
    assert missing["n"] == 0 and math.isnan(missing["reproduced"]) and missing["paper"] == 37.11


def test_ablation_table_with_plain_mapping() -> None:
    rows = [trial(i, i, mrr=0.35, variant=v) for i, v in enumerate(["full", "w/o L_nce", "extra variant"])]
    paper = {"full": {"mrr": 38.10, "hits@1": 30.13}, "w/o L_nce": {"mrr": 14.09}}
    frame = F.ablation_table(pd.DataFrame(rows), paper)
    assert frame["row"].unique().tolist() == ["full", "w/o L_nce", "extra variant"]
    assert _cell(frame, "w/o L_nce", "mrr")["difference"] == pytest.approx(35.0 - 14.09)
    assert math.isnan(_cell(frame, "full", "hits@3")["paper"])  # not in the mapping
    assert math.isnan(_cell(frame, "extra variant", "mrr")["paper"])
    assert _cell(F.ablation_table(pd.DataFrame(rows)), "full", "hits@10")["paper"] == 53.59  # published default


def test_main_table_filters_dataset() -> None:
    rows = [trial(0, 0, mrr=0.36, data__dataset="data/mkgw"), trial(1, 1, mrr=0.38, data__dataset="data/mkgw"),
            trial(2, 0, mrr=0.10, data__dataset="DB15K")]  # fmt: skip
    frame = F.main_table(pd.DataFrame(rows), dataset="MKG-W")
    kon = _cell(frame, "K-ON", "mrr")
    assert (kon["n"], kon["reproduced"], kon["paper"]) == (2, pytest.approx(37.0), 36.64)
    assert kon["difference"] == pytest.approx(0.36)
    rotate = _cell(frame, "RotatE", "hits@1")
    assert rotate["n"] == 0 and rotate["paper"] == 26.80 and math.isnan(rotate["difference"])
    assert math.isnan(_cell(frame, "GPT 3.5 Turbo", "mrr")["paper"])  # "-" in the paper
    with pytest.raises(ValueError, match="no finished trial on it"):
        F.main_table(pd.DataFrame(rows[2:]), dataset="MKG-W")


def test_paper_constants() -> None:
    for dataset, kon in (("DB15K", 38.10), ("MKG-W", 36.64)):
        assert len(TABLE2[dataset].rows) == 18 and TABLE2[dataset].rows["K-ON"]["mrr"] == kon
    assert TABLE2["MKG-W"].rows["KGLM"] == {"mrr": 34.12, "hits@1": 27.01, "hits@3": 36.87, "hits@10": 46.62}
    assert TABLE3.rows["Shared Head MLP"]["hits@1"] == 19.57 and len(TABLE3.rows) == 7
    assert TABLE3.rows["full"] == TABLE4.rows["+ learnable"] == TABLE2["DB15K"].rows["K-ON"]
    assert not FIGURE3.has_values and not FIGURE4.has_values and "K = 8" in FIGURE3.note and "128" in FIGURE4.note
    with pytest.raises(ValueError, match="metric='mr'"):
        PaperValues("Table X", {"a": {"mr": 1.0}})
    with pytest.raises(ValueError, match="percents"):
        PaperValues("Table X", {"a": {"mrr": 0.381 * 1000}})
    with pytest.raises(TypeError):
        TABLE3.rows["full"]["mrr"] = 0.0  # type: ignore[index]


def test_no_finished_trials_is_an_error(heads_table: pd.DataFrame, tmp_path: Path) -> None:
    unfinished = heads_table[heads_table["status"] != "TERMINATED"]
    with pytest.raises(ValueError, match="no finished trials"):
        F.heads_curve(unfinished)
    with pytest.raises(ValueError, match="no finished trials"):
        build_report([unfinished], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_registry_declares_every_analysis_a_study_can_name() -> None:
    assert tuple(REGISTRY) == ANALYSES
    for name, analysis in REGISTRY.items():
        assert analysis.name == name and callable(analysis.compute) and callable(analysis.draw)
        assert isinstance(analysis.paper, PaperValues) or all(isinstance(v, PaperValues) for v in analysis.paper.values())


def test_report_draws_only_what_the_study_names(heads_table: pd.DataFrame, tmp_path: Path) -> None:
    """The report guesses nothing from the varied columns: K varies here, but no analysis is named."""
    page = build_report([heads_table], tmp_path / "r.html", [StudyInfo("s")]).read_text()
    assert "<figure" not in page and "<h3>" not in page
    negatives = pd.DataFrame([trial(i, i, loss__negatives=n) for i, n in enumerate([16, 128])])
    page = build_report([negatives], tmp_path / "r.html", [StudyInfo("s", analyses=("negatives_curve",))]).read_text()
    assert 'id="fig-negatives"' in page and 'id="fig-heads"' not in page


def test_a_studys_paper_values_reach_its_report(tmp_path: Path) -> None:
    ablation = pd.DataFrame([trial(i, i, mrr=0.37, variant="full") for i in range(2)])
    mine = PaperValues("My Table", rows={"full": {"mrr": 12.34}})
    page = build_report([ablation], tmp_path / "r.html", [StudyInfo("s", ("ablation_table",), mine)]).read_text()
    assert ">12.34<" in page and "My Table" in page and ">38.10<" not in page
    by_dataset = {"DB15K": mine}
    page = build_report([ablation], tmp_path / "r.html", [StudyInfo("s", ("main_table",), by_dataset)]).read_text()
    assert 'id="table-main-db15k"' in page and ">12.34<" in page


@pytest.mark.parametrize("paper", [TABLE2, TABLE3, FIGURE3, None], ids=["by dataset", "table", "note", "none"])
def test_paper_values_survive_study_json(paper: object) -> None:
    """A study's paper values travel to its report through study.json."""
    saved = json.loads(json.dumps(published_to_json(paper)))  # type: ignore[arg-type]
    back = published_from_json(saved)
    assert (dict(back) if isinstance(back, Mapping) else back) == (dict(paper) if isinstance(paper, Mapping) else paper)


def test_unknown_analysis_is_refused_when_the_study_loads() -> None:
    with pytest.raises(ConfigError, match="analyses: 'heads' is not an analysis; valid: main_table, "):
        Study(name="x", analyses=("heads",))
    assert load_study(ROOT / "studies" / "hpo.py").analyses == ()  # Fig. 3/4 from confounded trials: none


def test_report_partial(heads_table: pd.DataFrame, tmp_path: Path) -> None:
    counts = status_counts(heads_table)
    assert counts == {"finished": 10, "failed": 1, "pruned": 1, "running": 1, "pending": 0}
    assert partial_banner(10, 13) == "partial: 10 of 13 trials finished" and partial_banner(3, 3) is None
    out = build_report([heads_table], tmp_path / "sub" / "report.html", [StudyInfo("s", ("heads_curve",), expected_trials=15)])
    page = out.read_text()
    assert "partial: 10 of 15 trials finished" in page
    assert "CUDA out of memory" in page and "8xA100" in page and "abc123 (clean)" in page and "torch 2.4.1" in page
    assert 'id="fig-heads"' in page and 'id="fig-negatives"' not in page
    assert '"toImageButtonOptions": {"format": "svg", "filename": "fig-heads"}' in page  # SVG for a paper
    assert "No published values" in page and "Student-t" in page
    assert not re.search(r"<script[^>]+src=", page) and page.count("<script") < 10
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp file left behind


def test_report_tables(tmp_path: Path) -> None:
    ablation = pd.DataFrame([trial(i, i % 2, mrr=0.37, variant=v) for i, v in enumerate(["full", "full", "w/o L_tdt"])])
    main = pd.DataFrame([trial(0, 0, mrr=0.38) | {"study": "main"}, trial(1, 1, mrr=0.38) | {"study": "main"}])
    infos = [StudyInfo("s", ("ablation_table",)), StudyInfo("main", ("main_table",))]
    page = build_report([ablation, main], tmp_path / "r.html", infos).read_text()
    assert 'id="table-ablation"' in page and 'id="table-main-db15k"' in page
    assert 'id="partial"' not in page
    assert ">38.10<" in page and ">37.00 ± 0.00<" in page and ">-1.10<" in page  # full: paper, reproduced, difference
    assert 'class="paper">paper<' in page and 'class="reproduced">reproduced<' in page


def test_figures_draw(heads_table: pd.DataFrame) -> None:
    fig = heads_figure(F.heads_curve(heads_table))
    assert len(fig.data) == 6 and fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.ticktext) == ["1<br>n=3", "2<br>n=3", "4<br>n=3", "8<br>n=1"]
    rows = [trial(i, i, loss__negatives=n) for i, n in enumerate([16, 128])]
    assert len(negatives_figure(F.negatives_curve(pd.DataFrame(rows))).data) == 12


@pytest.mark.skipif(importlib.util.find_spec("kaleido") is not None, reason="kaleido is installed: nothing to refuse")
def test_export_images_needs_kaleido(heads_table: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="pip install kaleido"):
        export_images({"fig3": heads_figure(F.heads_curve(heads_table))}, tmp_path)


def _optuna_study(tmp_path: Path, n_trials: int) -> str:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="quad", storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", -2, 2) - 1) ** 2 + t.suggest_int("k", 1, 8), n_trials=n_trials)
    return storage


def test_hpo_views(tmp_path: Path) -> None:
    views = hpo_views(_optuna_study(tmp_path, 3), "quad")
    assert list(views.figures) == ["history", "importance", "parallel"] and views.complete_trials == 3
    assert len(views.figures["history"].data[0].y) == 3
    assert set(views.figures["importance"].data[0].y) == {"x", "k"}
    assert views.notes == ()


def test_hpo_views_skip_importance_with_one_trial(tmp_path: Path) -> None:
    views = hpo_views(_optuna_study(tmp_path, 1), "quad")
    assert list(views.figures) == ["history", "parallel"]
    assert "need >= 2" in views.notes[0]
