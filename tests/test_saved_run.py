"""A finished run loaded again: its model/ folder, export for transformers and peft, predict, evaluate."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from kon_ray.cli import main
from kon_ray.config import PUBLISHED_LORA_TARGETS, ConfigError
from kon_ray.data import KnowledgeGraph, both_directions
from kon_ray.data.queries import HEAD, TAIL
from kon_ray.evaluation import metrics_from_table
from kon_ray.predict import Answer, answer_text, ask, per_relation, prompt_batch, resolve
from kon_ray.run_identity import RERANK_KEYS
from kon_ray.saved_run import export, load_run, model_folder
from kon_ray.training import evaluate, run
from tests.conftest import backbone_config, tiny_config

SHORT = ("train.max_steps=6", "train.evals_per_epoch=9")

# Run in a fresh process: rebuild the export with transformers, peft and kon_ray's model module
# (the K-ON heads); print the target score of each of the run's test queries and the heavy modules
# it loaded.
LOAD_EXPORT = """
import json, sys
from pathlib import Path
import pandas as pd, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from kon_ray.config import RunConfig
from kon_ray.data.prompts import Batch
from kon_ray.model import KON, KONModel

out, ranks = Path(sys.argv[1]), pd.read_parquet(sys.argv[2])
kon = json.loads((out / "kon.json").read_text())
if kon["weights"] == "adapter":
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained(kon["backbone"])
    backbone = PeftModel.from_pretrained(base, out / "adapter")
else:
    backbone = AutoModelForCausalLM.from_pretrained(out / "model")
heads = KON(RunConfig.from_dict({"model": kon["model"]}).model, kon["hidden_size"], kon["vocab_size"])
heads.load_state_dict(load_file(out / "kon_heads.safetensors"))
model = KONModel(backbone, heads).eval()
tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
table = load_file(out / "entities.safetensors")
entities = (out / "entities.txt").read_text().splitlines()
relations = (out / "relations.txt").read_text().splitlines()
scores = []
with torch.no_grad():
    for row in ranks.itertuples():
        template = kon["prompt"]["tail" if row.direction == 0 else "head"]
        text = template.format(entity=entities[row.anchor], relation=relations[row.relation])
        ids = torch.tensor([tokenizer(text)["input_ids"]])
        last = torch.tensor([ids.shape[1] - 1])
        batch = Batch(input_ids=ids, attention_mask=torch.ones_like(ids), last=last)
        scores.append(model.scores_all(batch, table["tokens"], table["mask"])[0, row.target].item())
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("deepspeed", "ray"))
print(json.dumps({"scores": scores, "heavy": heavy}))
"""


@pytest.fixture(scope="module")
def trained(tiny_kg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    run(tiny_config(tiny_kg, *SHORT), out)
    return out


def export_scores(out: Path, ranks: Path) -> list[float]:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_EXPORT, str(out), str(ranks)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["heavy"] == []  # neither DeepSpeed nor Ray: kon_ray's model module alone
    return loaded["scores"]


def test_run_folder_keeps_its_best_weights_and_tokenizer(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """model/ alone rebuilds the run: its test metrics come out again, with an empty cache."""
    monkeypatch.setenv("KON_RAY_CACHE", str(tmp_path / "empty-cache"))
    metrics = json.loads((trained / "metrics.json").read_text())
    moved = shutil.copytree(trained / "model", tmp_path / "elsewhere" / "model")
    saved = load_run(moved.parent)
    again, table = evaluate(saved.setup, "test", None)
    assert again["mrr"] == pytest.approx(metrics["test.mrr"], abs=1e-9)
    ranks = pd.read_parquet(trained / "ranks.parquet")
    np.testing.assert_allclose(table["target_score"], ranks["target_score"], rtol=1e-6)
    optimistic, _ = evaluate(load_run(trained, ["eval.ties=optimistic"]).setup, "test", None)
    assert optimistic["mrr"] == pytest.approx(metrics_from_table(ranks, "optimistic")["mrr"], abs=1e-9)


def test_a_saved_run_is_not_retrained_in_other_settings(trained: Path) -> None:
    with pytest.raises(ConfigError, match="model.k=3: a saved run is ranked as it was trained"):
        load_run(trained, ["model.k=3"])


def test_a_saved_run_on_changed_data_is_refused(tiny_kg: Path, tmp_path: Path) -> None:
    kg = shutil.copytree(tiny_kg, tmp_path / "kg")
    run(tiny_config(kg, "train.max_steps=2"), tmp_path / "run")
    with (kg / "train.tsv").open("a") as f:
        f.write("Kalomi\tfriendOf\tCity of Vi\n")
    with pytest.raises(ConfigError, match="trained on other data or another backbone: data hash"):
        load_run(tmp_path / "run")


def test_embedded_export_loads_in_a_fresh_process_with_the_run_scores(trained: Path, tmp_path: Path) -> None:
    export(load_run(trained), tmp_path / "export")
    assert (tmp_path / "export" / "model" / "config.json").is_file()
    ranks = pd.read_parquet(trained / "ranks.parquet").head(12)
    np.testing.assert_allclose(export_scores(tmp_path / "export", trained / "ranks.parquet")[:12],
                               ranks["target_score"], rtol=1e-4)  # fmt: skip


PUBLISHED = f"model.lora_targets={','.join(PUBLISHED_LORA_TARGETS)}"
# (family, further overrides, the export's weights folder)
EXPORTS = [
    ("llama", (), "adapter"),
    ("gpt2", (), "adapter"),
    ("llama", (PUBLISHED,), "adapter"),
    ("qwen2", ("model.backbone_tuning=full",), "model"),
]


@pytest.mark.parametrize(
    ("family", "extra", "weights"), EXPORTS, ids=[f"{f}-{'-'.join(e) or 'default'}" for f, e, _ in EXPORTS]
)
def test_pretrained_export_loads_on_the_base_with_the_run_scores(
    backbones: Callable[[str], Path], tiny_kg: Path, tmp_path: Path, family: str, extra: tuple[str, ...],
    weights: str,
) -> None:
    """A SentencePiece Llama without a pad token, a GPT-2 with tied embeddings, LoRA on the Llama's
    embedding (the published targets: peft's LoRA embedding, the base's own embedding left out of the
    adapter), and a fully tuned Qwen2 (the whole model in model/, no adapter)."""
    base = backbones(family)
    out = tmp_path / "run"
    run(backbone_config(tiny_kg, base, "data.prompt=compact", "data.test_limit=6", *SHORT, *extra), out)
    names = load_file(str(out / "model" / "trainable.safetensors")).keys()
    main(["export", str(out), "--out", str(tmp_path / "export")])
    kon = json.loads((tmp_path / "export" / "kon.json").read_text())
    assert kon["weights"] == weights and kon["backbone"] == str(base.resolve())
    if weights == "adapter":
        assert names and all("lora_" in n or n.startswith("kon.") for n in names)  # never the frozen backbone
        adapter = json.loads((tmp_path / "export" / "adapter" / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(base.resolve())
        saved = load_file(str(tmp_path / "export" / "adapter" / "adapter_model.safetensors"))
        assert all("lora_" in n for n in saved)  # not the base's own embedding either
        if PUBLISHED in extra:
            assert sorted(adapter["target_modules"]) == sorted(PUBLISHED_LORA_TARGETS)
            assert any("lora_embedding_A" in n for n in saved)
    else:
        assert not (tmp_path / "export" / "adapter").exists()
        assert (tmp_path / "export" / "model" / "config.json").is_file()
    ranks = pd.read_parquet(out / "ranks.parquet")
    scores = export_scores(tmp_path / "export", out / "ranks.parquet")
    np.testing.assert_allclose(scores, ranks["target_score"], rtol=1e-4)


def test_study_trials_are_found_by_id_tune_folder_or_train_folder(trained: Path, tmp_path: Path) -> None:
    study = tmp_path / "quick"
    (study / "study.json").parent.mkdir()
    (study / "study.json").write_text("{}")
    for step in ("checkpoint_000001", "checkpoint_000002"):
        shutil.copytree(trained / "model", study / "train" / "train-ab12_00000" / step / "model")
    tune_trial = study / "run_trial_ab12_00000_0_seed=0_2026-12-01"
    tune_trial.mkdir()
    (tune_trial / "result.json").write_text(json.dumps({"trial_id": "ab12_00000"}) + "\n")
    expected = study / "train" / "train-ab12_00000" / "checkpoint_000002" / "model"
    for target in (study / "ab12_00000", tune_trial, study / "train" / "train-ab12_00000"):
        assert model_folder(target) == expected
    with pytest.raises(ConfigError, match="not a run folder"):
        model_folder(study / "ab12_99999")


def test_names_ids_and_indices_resolve_and_unknown_or_shared_names_get_help() -> None:
    names = ["Paris", "Lyon", "Paris", "Nice", "Q2", "Rome"]
    ids = ["Q90", "Q456", "Q830", "00012", "Q1", "Q2"]
    assert resolve("Lyon", names, ids, "entity") == 1 and resolve("lyon", names, ids, "entity") == 1
    assert resolve("Q830", names, ids, "entity") == 2 and resolve("00012", names, ids, "entity") == 3
    assert resolve("#2", names, ids, "entity") == 2 and resolve("#5", names, ids, "entity") == 5
    assert resolve("Q2", names, ids, "entity") == 4  # a name before an id
    with pytest.raises(ConfigError, match=r"'Paris' is ambiguous: 2 share it \(Q90, Q830\); give one's id, e.g. 'Q90'"):
        resolve("Paris", names, ids, "entity")
    with pytest.raises(ConfigError, match=r"'Paris' is ambiguous: 2 share it \(#0, #2\)"):
        resolve("Paris", names, (), "entity")  # a KG built in code: its indices
    with pytest.raises(ConfigError, match="no entity named 'lion'.*closest: 'Lyon'"):
        resolve("lion", names, ids, "entity")
    with pytest.raises(ConfigError, match="no entity named '12'.*closest: .*'00012'"):
        resolve("12", names, ids, "entity")  # an id as written: '00012' is not '12'
    with pytest.raises(ConfigError, match="no entity named 'Zzzz'.*; no name or id is close$"):
        resolve("Zzzz", names, ids, "entity")
    with pytest.raises(ConfigError, match="no entity named '3'.*; an index is written '#3'"):
        resolve("3", names, ids, "entity")
    # TSV labels are the ids: two that make the same name are told apart by the label itself
    assert resolve("New York", ["New York", "New York"], ["New_York", "New York"], "entity") == 1


def test_answers_carry_ids_on_repeated_names_the_ties_and_known_ones() -> None:
    none = np.zeros((0, 3), dtype=np.int64)
    kg = KnowledgeGraph(
        "hand", ("Paris", "Lyon", "Paris", "Nice"), ("located in", "located in", "twin of"), train=none,
        valid=none, test=none, digest="", entity_ids=("Q90", "Q456", "Q830", "Q33959"),
        relation_ids=("P131", "P276", "P190"),
    )  # fmt: skip
    answers = [Answer(2, 1, -0.25, True), Answer(1, 2, -1.5, False), Answer(3, 2, -1.5, True)]
    assert answer_text(kg, 0, 0, TAIL, answers, top=2).splitlines() == [
        "(Paris (Q90), located in (P131), ?)  top 2 of 4 entities, 1 more tied with the last",
        " rank      score  entity        in training",
        "    1    -0.2500  Paris (Q830)  known",
        "    2    -1.5000  Lyon",
        "    2    -1.5000  Nice          known",
    ]
    assert answer_text(kg, 1, 2, HEAD, answers[:1], top=1).splitlines()[0] == "(?, twin of, Lyon)  top 1 of 4 entities"


def test_per_relation_figures_on_the_chosen_ranks_with_ids_on_repeated_names() -> None:
    none = np.zeros((0, 3), dtype=np.int64)
    kg = KnowledgeGraph("hand", ("a",), ("near", "near", "in"), none, none, none, "", relation_ids=("P1", "P2", "P3"))
    table = pd.DataFrame({"relation": [0, 0, 2, 1], "direction": [TAIL, HEAD, TAIL, TAIL],
                          "optimistic": [1.0, 2.0, 1.0, 4.0], "pessimistic": [3.0, 2.0, 5.0, 4.0]})  # fmt: skip
    rows = per_relation(table, kg, "pessimistic")
    assert rows["relation"].tolist() == ["near (P1)", "in", "near (P2)"]  # most queries first, then by name
    assert rows["queries"].tolist() == [2, 1, 1]
    assert rows["mrr"].tolist() == pytest.approx([(1 / 3 + 1 / 2) / 2, 1 / 5, 1 / 4])
    assert rows["hits@3"].tolist() == [1.0, 0.0, 0.0]


def test_prompt_of_any_query_is_the_one_training_read(trained: Path) -> None:
    s = load_run(trained).setup
    queries = both_directions(s.kg.test[:4])
    for i in range(len(queries)):
        one = queries.take(slice(i, i + 1))
        expected = s.encoded.batch(one, with_targets=False)
        got = prompt_batch(s, int(one.anchor[0]), int(one.relation[0]), int(one.direction[0]))
        assert torch.equal(got.input_ids, expected.input_ids) and torch.equal(got.last, expected.last)


def test_answers_show_ties_with_the_last_and_known_ones(
    trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = load_run(trained).setup
    head, relation, tail = (int(v) for v in s.kg.train[0])
    scores = torch.linspace(-9.0, -1.0, s.kg.num_entities)
    scores[[5, 6, 7]] = -0.5  # three tied for second place, the top being 2 long
    scores[tail] = 0.0
    monkeypatch.setattr(s.model, "scores_all", lambda *args: scores[None])
    answers = ask(s, head, relation, 0, top=2)
    assert [a.entity for a in answers] == [tail, 5, 6, 7]
    assert [a.rank for a in answers] == [1, 2, 2, 2]
    assert answers[0].known and not any(a.known for a in answers[1:] if a.entity != tail)
    lines = answer_text(s.kg, head, relation, TAIL, answers, top=2).splitlines()
    assert lines[0].endswith(f"top 2 of {s.kg.num_entities} entities, 2 more tied with the last")
    assert lines[2].split() == ["1", "0.0000", *s.kg.entity_names[tail].split(), "known"]


def test_predict_asks_by_name_or_id_for_the_tail_or_the_head(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_run(trained).setup
    head, relation, _ = (int(v) for v in s.kg.train[0])
    entity, name, label = s.kg.entity_names[head], s.kg.relation_names[relation], s.kg.relation_ids[relation]
    assert label != name  # the tiny KG's labels are camelCase: 'livesIn' reads 'lives in'
    for given, direction in ((name, TAIL), (label, TAIL), (name, HEAD)):
        main(["predict", str(trained), entity, given, "--top", "3", *(["--head"] if direction == HEAD else [])])
        expected = answer_text(s.kg, head, relation, direction, ask(s, head, relation, direction, 3), 3)
        assert capsys.readouterr().out == expected + "\n"
    assert expected.startswith(f"(?, {name}, {entity})  top 3")
    with pytest.raises(SystemExit) as stopped:
        main(["predict", str(trained), "Nobody At All", name])
    assert stopped.value.code == 2 and "no entity named 'Nobody At All'" in capsys.readouterr().err


def test_predict_queries_go_on_past_an_unknown_name(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_run(trained).setup
    head, relation, _ = (int(v) for v in s.kg.train[0])
    entity, name = s.kg.entity_names[head], s.kg.relation_names[relation]
    queries = tmp_path / "queries.tsv"
    queries.write_text(f"#{head}\t{name}\n# a comment\n{entity[:-1]}\t{name}\n{entity}\tlives on\n#{head}\t#{relation}\thead\n")
    with pytest.raises(SystemExit) as stopped:
        main(["predict", str(trained), "--queries", str(queries), "--top", "1"])
    out, err = capsys.readouterr()
    assert stopped.value.code == 2
    expected = [answer_text(s.kg, head, relation, d, ask(s, head, relation, d, 1), 1) for d in (TAIL, HEAD)]
    assert out == "\n\n".join(expected) + "\n"  # the first and last queries, asked
    errors = [line for line in err.splitlines() if line.startswith("kon-ray: ")]  # not the log lines
    assert errors[0].startswith(f"kon-ray: error: {queries}, line 3: no entity named {entity[:-1]!r}")
    assert f"closest: {entity!r}" in errors[0]
    assert errors[1].startswith(f"kon-ray: error: {queries}, line 4: no relation named 'lives on'")
    assert errors[2] == f"kon-ray: error: {queries}: 2 of 4 queries not asked (above)"


def test_evaluate_prints_the_run_ranks_per_direction_and_relation(
    trained: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The figures of ``kon-ray evaluate`` on the test split are those of the run's ranks.parquet."""
    s = load_run(trained).setup
    ranks = pd.read_parquet(trained / "ranks.parquet")
    main(["evaluate", str(trained)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"test split of {s.kg.name}, filtered, realistic ties"
    printed = {}
    for line in lines[2:]:
        if line != "per relation (both directions)":
            label, *figures = line.rsplit(None, 5)
            printed[label.strip()] = [float(f) for f in figures]

    def figures(part: pd.DataFrame) -> list[float]:
        rank = part["realistic"]
        return [len(part), (1 / rank).mean(), *((rank <= k).mean() for k in (1, 3, 10))]

    expected = {"all": figures(ranks), "tail": figures(ranks[ranks.direction == TAIL]),
                "head": figures(ranks[ranks.direction == HEAD])}  # fmt: skip
    expected |= {s.kg.relation_names[r]: figures(part) for r, part in ranks.groupby("relation")}
    assert printed.keys() == expected.keys() and len(expected) == 3 + s.kg.num_relations
    for label, values in expected.items():
        assert printed[label] == pytest.approx(values, abs=5.1e-5), label
    main(["evaluate", str(trained), "--split", "valid", "eval.ties=pessimistic"])
    assert capsys.readouterr().out.startswith(f"valid split of {s.kg.name}, filtered, pessimistic ties")
    main(["evaluate", str(trained), "--split", "train", "--limit", "5"])
    fit = capsys.readouterr().out.splitlines()
    train, _ = evaluate(s, "train", 5)
    assert fit[0] == f"train split of {s.kg.name}, filtered, realistic ties"
    assert fit[2].split()[:3] == ["all", "10", f"{train['mrr']:.4f}"]  # 5 triples, both directions
    with pytest.raises(SystemExit) as refused:
        main(["evaluate", str(trained), "--limit", "0"])
    assert refused.value.code == 2 and "--limit 0: must be at least 1" in capsys.readouterr().err


def test_evaluate_and_predict_help_say_what_they_accept(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("evaluate", "predict"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "settings of the ranking: eval.*, data.valid_limit, data.test_limit, data.valid_unseen;" in shown
    assert f"{RERANK_KEYS[-1]};" in shown  # from RERANK_KEYS, which load_run enforces
    assert "those tied with the last (default: 10)" in shown and "or #INDEX (e.g. #12)" in shown


def test_evaluation_ranks_in_the_chunk_its_config_derives(trained: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    from kon_ray.config import EvalConfig

    module = importlib.import_module("kon_ray.training.evaluate")  # the module, not the function

    s = load_run(trained, ["eval.chunk_mb=1"]).setup
    asked, chunks = [], []
    monkeypatch.setattr(EvalConfig, "chunk", lambda self, entities: asked.append((self.chunk_mb, entities)) or 3)
    rank = module.rank_queries
    monkeypatch.setattr(module, "rank_queries", lambda *a: chunks.append(a[3]) or rank(*a))
    evaluate(s, "test", 4)
    assert asked == [(1, s.kg.num_entities)] and chunks == [3]
