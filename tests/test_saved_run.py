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
from kon_ray.data import both_directions
from kon_ray.evaluation import metrics_from_table
from kon_ray.predict import ask, prompt_batch, resolve
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


def test_names_and_ids_resolve_and_unknown_or_shared_names_get_help() -> None:
    names = ["Paris", "Lyon", "Paris", "Nice", "42"]
    assert resolve("Lyon", names, "entity") == 1
    assert resolve("lyon", names, "entity") == 1
    assert resolve("#2", names, "entity") == 2 and resolve("3", names, "entity") == 3
    assert resolve("42", names, "entity") == 4  # a name before an id
    with pytest.raises(ConfigError, match=r"'Paris' is ambiguous: 2 share that name \(#0, #2\)"):
        resolve("Paris", names, "entity")
    with pytest.raises(ConfigError, match="no entity named 'lion'.*closest: 'Lyon'"):
        resolve("lion", names, "entity")


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


def test_predict_and_evaluate_commands(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = load_run(trained).setup
    head, relation, _ = (int(v) for v in s.kg.train[0])
    main(["predict", str(trained), s.kg.entity_names[head], s.kg.relation_names[relation], "--top", "3"])
    out = capsys.readouterr().out
    assert f"({s.kg.entity_names[head]}, {s.kg.relation_names[relation]}, ?)  top 3" in out
    queries = tmp_path / "queries.tsv"
    queries.write_text(f"#{head}\t{s.kg.relation_names[relation]}\n# a comment\n#{head}\t#{relation}\thead\n")
    main(["predict", str(trained), "--queries", str(queries), "--top", "1"])
    out = capsys.readouterr().out
    assert out.count("top 1 of") == 2 and f"(?, {s.kg.relation_names[relation]}," in out
    with pytest.raises(SystemExit) as stopped:
        main(["predict", str(trained), "Nobody At All", s.kg.relation_names[relation]])
    assert stopped.value.code == 2 and "no entity named 'Nobody At All'" in capsys.readouterr().err
    main(["evaluate", str(trained), "--split", "valid", "eval.ties=pessimistic"])
    out = capsys.readouterr().out
    assert "valid split" in out and "pessimistic ties" in out
    for name in s.kg.relation_names:
        assert name in out
    for line in ("all", "tail", "head"):
        assert any(row.startswith(line) for row in out.splitlines())
