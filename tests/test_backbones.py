"""Pretrained Hugging Face backbones (tiny, saved offline) with LoRA, end to end: ZeRO 0-3, the
trainable weights, what checkpoints hold, eq. 8's tokens after the prompt, and resuming.

The 1-worker cells run in this process (``kon_ray.training.run``); the 2-worker cells on Ray.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import ray
import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from kon_ray.cli import main
from kon_ray.config import PUBLISHED_LORA_TARGETS, ConfigError, ModelConfig, flatten
from kon_ray.data import load_kg
from kon_ray.data.prompts import TEMPLATES
from kon_ray.data.queries import TAIL
from kon_ray.distributed import launch, start_ray
from kon_ray.training import run, setup
from kon_ray.training.setup import Setup
from tests.backbones import FAMILIES
from tests.conftest import backbone_config

Backbones = Callable[[str], Path]
ROOT = Path(__file__).resolve().parents[1]


def losses(metrics: dict) -> list[float]:
    return [record["train.loss"] for record in metrics["history"]]


def tensors(obj: object, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested checkpoint object, with its dotted path."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from tensors(value, f"{path}.{key}" if path else str(key))
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            yield from tensors(value, f"{path}.{i}")


# Files of a checkpoint that hold no tensor: records, manifests, DeepSpeed's 'latest' tag and the
# zero_to_fp32.py script it copies beside its shards.
NO_TENSORS = (".json", ".py", "")


def saved_tensors(folder: Path) -> dict[Path, dict[str, torch.Tensor]]:
    """Every tensor of every file under ``folder``: safetensors and torch pickles (DeepSpeed's).
    Any other kind of file is refused, so that none goes unread."""
    out: dict[Path, dict[str, torch.Tensor]] = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        if file.suffix == ".safetensors":
            with safe_open(str(file), "pt") as f:
                out[file] = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (no __iter__)
        elif file.suffix in (".pt", ".bin", ".pth"):
            out[file] = dict(tensors(torch.load(file, map_location="cpu", weights_only=False)))
        else:
            assert file.suffix in NO_TENSORS, f"{file}: a file of a kind the test cannot read"
    return out


def assert_no_frozen_weight(folder: Path, s: Setup) -> None:
    """Weight files (safetensors, and the 'module' of DeepSpeed's model states) name only trainable
    weights, and all files together hold no more numbers than the trainable weights' copies:
    weights, best weights, DeepSpeed's module and its optimiser's fp32 weights and 2 moments."""
    every = s.model.named_parameters(remove_duplicate=False)  # a tied head under both its names
    trainable = {name: p.numel() for name, p in every if p.requires_grad}
    files = saved_tensors(folder)
    assert any(f.name.endswith("model_states.pt") for f in files), sorted(files)
    for file, named in files.items():
        if file.suffix == ".safetensors":
            names = set(named)
        elif file.name.endswith("model_states.pt"):
            names = {name.removeprefix("module.") for name in named if name.startswith("module.")}
        else:
            continue  # an optimiser shard: flat fp32 groups and moments, no names; counted below
        assert names and names <= set(trainable), (file.name, sorted(names - set(trainable))[:3])
    saved = sum(t.numel() for named in files.values() for t in named.values())
    assert saved <= 6 * sum(trainable.values()) + 64, saved


def kept_checkpoints(folder: Path) -> list[Path]:
    """The training checkpoints a run left under ``folder``, with or without Ray (its final
    report's checkpoint, which holds results and no optimiser state, left out)."""
    kept = sorted(p.parent for p in folder.rglob("state.json"))
    assert kept, sorted(folder.rglob("*"))
    return kept


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_default_lora_targets_and_trainable_weights(tiny_kg: Path, backbones: Backbones, family: str) -> None:
    """model.lora_targets unset: peft's targets for the architecture (GPT-2 has no q_proj, only
    c_attn). Trainable: the LoRA adapters (as many as peft counts), the K-ON heads, the step weights."""
    s = setup(backbone_config(tiny_kg, backbones(family)))
    backbone = s.model.backbone
    assert sorted(backbone.peft_config["default"].target_modules) == sorted(PEFT_TARGETS[family])
    lora, _ = backbone.get_nb_trainable_parameters()
    trainable = {name: p.numel() for name, p in s.model.named_parameters() if p.requires_grad}
    kon = {name for name in trainable if name.startswith("kon.")}
    assert "kon.step_weights" in kon and any(name.startswith("kon.head_mlps.") for name in kon)
    adapters = set(trainable) - kon
    assert adapters and all(".lora_" in name for name in adapters)
    targets = {name.split(".lora_")[0].rsplit(".", 1)[-1] for name in adapters}
    assert targets == set(PEFT_TARGETS[family])
    assert sum(trainable[name] for name in adapters) == lora
    assert sum(trainable[name] for name in kon) == sum(p.numel() for p in s.model.kon.parameters())


def test_published_targets_adapt_the_embedding(tiny_kg: Path, backbones: Backbones) -> None:
    published = f"model.lora_targets={','.join(PUBLISHED_LORA_TARGETS)}"
    s = setup(backbone_config(tiny_kg, backbones("llama"), published))
    names = [name for name, p in s.model.named_parameters() if p.requires_grad]
    assert any("embed_tokens.lora_embedding_A" in name for name in names)
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names if ".lora_" in n}
    assert targets == set(PUBLISHED_LORA_TARGETS)


def test_full_tuning_trains_every_backbone_weight(tiny_kg: Path, backbones: Backbones) -> None:
    s = setup(backbone_config(tiny_kg, backbones("gpt2"), "model.backbone_tuning=full"))
    assert all(p.requires_grad for p in s.model.parameters())
    assert not any(".lora_" in name for name, _ in s.model.named_parameters())


@pytest.mark.parametrize("template", sorted(TEMPLATES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_entity_tokens_are_what_the_backbone_reads_after_the_prompt(
    tiny_kg: Path, backbones: Backbones, family: str, template: str
) -> None:
    """Eq. 8: the prompt's ids followed by an entity's K-ON tokens are the tokenizer's own ids of
    the prompt text followed by ' ' and the name."""
    s = setup(backbone_config(tiny_kg, backbones(family), f"data.prompt={template}", "model.k=16"))
    tokenizer = AutoTokenizer.from_pretrained(backbones(family))
    kg = load_kg(str(tiny_kg))
    prompt = TEMPLATES[template][TAIL].format(entity=kg.entity_names[0], relation=kg.relation_names[0])
    prompt_ids = tokenizer(prompt)["input_ids"]
    assert (s.encoded.name_lengths <= 16).all()  # no name truncated: whole names compared
    differs = 0
    for e, name in enumerate(kg.entity_names):
        ids = s.encoded.entity_tokens[e, : s.encoded.name_lengths[e]].tolist()
        assert prompt_ids + ids == tokenizer(f"{prompt} {name}")["input_ids"], name
        differs += ids != tokenizer(" " + name, add_special_tokens=False)["input_ids"]
    if family == "llama":  # the leading-space case: ' Name' alone starts with '▁▁', not '▁Name'
        assert differs == kg.num_entities


def test_a_name_merging_with_the_prompt_is_refused(
    tiny_kg: Path, backbones: Backbones, tmp_path: Path
) -> None:
    """A tokenizer whose merges join the prompt's last word and the name has no eq. 8 tokens of its own."""
    folder = shutil.copytree(backbones("llama"), tmp_path / "merging")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["vocab"]["=▁"] = len(spec["model"]["vocab"])
    spec["model"]["merges"].insert(0, ["=", "▁"])
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ConfigError, match=r"merges the entity name '\w+' with the prompt's last word '='"):
        setup(backbone_config(tiny_kg, folder, "data.prompt=compact"))


def test_llama_fixture_is_sentencepiece_style_without_pad(backbones: Backbones) -> None:
    llama = AutoTokenizer.from_pretrained(backbones("llama"))
    assert llama.pad_token is None and llama("x")["input_ids"][0] == llama.bos_token_id
    assert llama.tokenize(" City")[0] == "▁▁" and llama.tokenize("is: City")[-1] == "▁City"
    gpt2 = AutoModelForCausalLM.from_pretrained(backbones("gpt2"))
    assert gpt2.get_output_embeddings().weight is gpt2.get_input_embeddings().weight  # tied
    assert AutoTokenizer.from_pretrained(backbones("gpt2")).pad_token is None


def test_qwen2_fixture_has_grouped_query_attention_and_a_pad_token(backbones: Backbones) -> None:
    qwen2 = AutoModelForCausalLM.from_pretrained(backbones("qwen2"))
    c = qwen2.config
    assert c.model_type == "qwen2" and 1 < c.num_key_value_heads < c.num_attention_heads
    attention = qwen2.model.layers[0].self_attn
    kv, q = attention.k_proj.out_features, attention.q_proj.out_features
    assert kv * c.num_attention_heads == q * c.num_key_value_heads  # K and V for fewer heads than Q
    assert qwen2.get_output_embeddings().weight is qwen2.get_input_embeddings().weight  # tied
    tokenizer = AutoTokenizer.from_pretrained(backbones("qwen2"))
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id is not None


def test_the_tested_families_are_named_in_the_help_and_the_docs() -> None:
    names = {"llama": "Llama", "gpt2": "GPT-2", "qwen2": "Qwen2"}
    assert set(names) == set(FAMILIES)
    help_text = {f.name: f.metadata["help"] for f in dataclasses.fields(ModelConfig)}["backbone"]
    assert "docs/backbones.md" in help_text and all(name in help_text for name in names.values())
    table = (ROOT / "docs" / "backbones.md").read_text()
    assert all(f"| `{family}` |" in table for family in FAMILIES)


def test_train_command_on_a_saved_backbone(
    tiny_kg: Path, backbones: Backbones, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kon-ray train model.backbone=PATH --no-ray``: metrics.json, and model/ with the LoRA
    adapters and K-ON heads (no frozen weight) and the backbone's own tokenizer."""
    backbone = backbones("qwen2")
    steps = ("train.max_steps=2", "train.evals_per_epoch=9", "data.test_limit=6")
    config = backbone_config(tiny_kg, backbone, *steps)
    overrides = [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in flatten(config.to_dict())
                 if v is not None]
    main(["train", "--no-ray", *overrides, "--out", str(tmp_path)])
    assert "test MRR" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["config"]["model"]["backbone"] == str(backbone)
    model = tmp_path / "model"
    names = load_file(str(model / "trainable.safetensors")).keys()
    assert any(".lora_A." in n for n in names) and any(n.startswith("kon.") for n in names)
    assert all(".lora_" in n or n.startswith("kon.") for n in names)
    saved = AutoTokenizer.from_pretrained(model / "tokenizer")
    assert saved.get_vocab() == AutoTokenizer.from_pretrained(backbone).get_vocab()
    assert json.loads((model / "run.json").read_text())["config"]["model"]["backbone"] == str(backbone)


# 1-worker cells, in process: (family, ZeRO stage, further overrides).
CELLS = [
    ("llama", 0, ("data.prompt=instruction",)),
    ("gpt2", 1, ("data.prompt=compact",)),
    ("qwen2", 2, ()),
    ("llama", 3, ()),
    ("llama", 3, (f"model.lora_targets={','.join(PUBLISHED_LORA_TARGETS)}",)),
    ("gpt2", 3, ("model.backbone_tuning=full",)),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("family", "stage", "extra"), CELLS, ids=[f"{f}-zero{s}-{'-'.join(e)}" for f, s, e in CELLS]
)
def test_backbone_trains_under_zero_stage(
    tiny_kg: Path, backbones: Backbones, tmp_path: Path, family: str, stage: int, extra: tuple[str, ...]
) -> None:
    """The loss falls, K-ON learns something, and no checkpoint file holds a frozen weight."""
    config = backbone_config(tiny_kg, backbones(family), f"train.zero_stage={stage}", *extra)
    metrics = run(config, tmp_path / "run")
    curve = losses(metrics)
    assert len(curve) >= 2 and curve[-1] < curve[0] - 0.2, curve
    assert metrics["test.mrr"] > 0.2  # chance is about 0.1 on the tiny KG
    s = setup(config)
    for folder in kept_checkpoints(tmp_path / "run" / "checkpoints"):
        assert_no_frozen_weight(folder, s)


def test_zero3_accumulates_every_micro_batch(tiny_kg: Path, backbones: Backbones, tmp_path: Path) -> None:
    """2 micro-batches per step: ZeRO-3 follows ZeRO-2 (run through the engine's forward, not the
    module's, or ZeRO-3 keeps only the last micro-batch's gradients)."""
    settings = ("train.max_steps=8", "train.evals_per_epoch=4", "train.batch_size=16", "train.grad_accum=2",
                "model.dtype=float32")
    backbone = backbones("llama")
    runs = [
        run(backbone_config(tiny_kg, backbone, *settings, f"train.zero_stage={stage}"), tmp_path / str(stage))
        for stage in (2, 3)
    ]
    assert losses(runs[1]) == pytest.approx(losses(runs[0]), rel=1e-4)


@pytest.mark.slow
def test_same_seed_same_metrics_and_a_killed_run_resumes(
    tiny_kg: Path, backbones: Backbones, tmp_path: Path, crash_after: Callable[[int], Path]
) -> None:
    """ZeRO-3 with LoRA: the same seed gives the same metrics; a run killed after a checkpoint
    and run again in the same folder resumes and ends as the uninterrupted run."""
    config = backbone_config(tiny_kg, backbones("qwen2"), "train.zero_stage=3")
    whole = run(config, tmp_path / "whole")
    again = run(config, tmp_path / "again")
    assert losses(again) == losses(whole) and again["test.mrr"] == whole["test.mrr"]
    s = setup(config)
    for folder in kept_checkpoints(tmp_path / "whole" / "checkpoints"):
        assert_no_frozen_weight(folder, s)
    crashed = crash_after(6)  # checkpoints at steps 4, 8 and 12: it crashes after step 8
    with pytest.raises(RuntimeError, match="injected crash after step 8"):
        run(config, tmp_path / "resumed")
    assert crashed.exists()
    resumed = run(config, tmp_path / "resumed")
    assert resumed["steps"] == whole["steps"]
    assert losses(resumed) == pytest.approx(losses(whole), rel=1e-5)
    assert resumed["test.mrr"] == pytest.approx(whole["test.mrr"], abs=1e-6)
    for folder in kept_checkpoints(tmp_path / "resumed" / "checkpoints"):
        assert_no_frozen_weight(folder, s)


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    start_ray(None, num_cpus=2)
    yield
    ray.shutdown()


# The same global batch of 16 queries per step, split over 1 or 2 workers.
STEPS = ("train.max_steps=8", "train.evals_per_epoch=4", "train.batch_size=16")


@pytest.mark.slow
def test_lora_on_two_zero3_workers_matches_one(
    local_ray: None, tiny_kg: Path, backbones: Backbones, tmp_path: Path
) -> None:
    """LoRA with the published targets (peft's LoRA embedding included) on a pretrained backbone,
    partitioned by ZeRO-3 over 2 Ray workers (how a 70B model runs), follows 1 worker at the same
    global batch, and checkpoints no frozen weight in any rank's files."""
    backbone = backbones("llama")
    published = f"model.lora_targets={','.join(PUBLISHED_LORA_TARGETS)}"
    zero3 = (*STEPS, "train.zero_stage=3", published)
    config = backbone_config(tiny_kg, backbone, *zero3, "train.workers=2")
    two = launch(config, tmp_path / "two")
    one = run(backbone_config(tiny_kg, backbone, *zero3, "train.grad_accum=2"), tmp_path / "one")
    assert two["workers"] == 2 and len(losses(two)) == len(losses(one)) >= 2
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    assert two["test.mrr"] == pytest.approx(one["test.mrr"], abs=0.02)
    s = setup(config)
    assert any("lora_embedding_A" in name for name, p in s.model.named_parameters() if p.requires_grad)
    for folder in kept_checkpoints(tmp_path / "two" / "ray"):
        for part in ("model_states", "optim_states"):  # each rank writes its own ZeRO-3 partition
            ranks = sorted(f.name for f in folder.rglob(f"*zero_pp_rank_*_{part}.pt"))
            assert len(ranks) == 2, (folder, ranks)
        assert_no_frozen_weight(folder, s)


@pytest.mark.slow
def test_embedded_default_on_two_zero3_workers_matches_one(
    local_ray: None, tiny_kg: Path, tmp_path: Path
) -> None:
    """The embedded backbone, fully tuned, partitioned by ZeRO-3 over 2 workers: K-ON's score
    layers read the partitioned output head (W^S), and training follows 1 worker at the same
    global batch."""
    from tests.conftest import tiny_config

    zero3 = (*STEPS, "train.zero_stage=3")
    two = launch(tiny_config(tiny_kg, *zero3, "train.workers=2"), tmp_path / "two")
    one = run(tiny_config(tiny_kg, *zero3, "train.grad_accum=2"), tmp_path / "one")
    assert two["workers"] == 2 and len(losses(two)) == len(losses(one)) >= 2
    assert losses(two)[-1] < losses(two)[0]
    assert losses(two) == pytest.approx(losses(one), rel=1e-3)
    assert two["test.mrr"] == pytest.approx(one["test.mrr"], abs=0.02)
