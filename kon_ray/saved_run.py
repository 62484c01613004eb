"""A trained run, loaded again from what it left on disk; and its export, for use without the run folder.

RUN is a run folder (``kon-ray train --out``, with or without Ray), its ``model/`` folder, or a
study trial: ``<study folder>/<trial id>``, the trial's Tune folder, or its Ray Train run
folder (``<study folder>/train/train-<trial id>``). Every finished run keeps ``model/``
(``kon_ray.checkpoint.save_model``): its best trainable weights, its tokenizer, its config and
its identity. Loading rebuilds the run's setup with that tokenizer, checks that the data and the
backbone are still those it was trained on, and loads the weights.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from kon_ray.checkpoint import MODEL_DIR, MODEL_RECORD, MODEL_WEIGHTS, load_trainable
from kon_ray.config import EMBEDDED, ConfigError, RunConfig, apply_overrides
from kon_ray.data.prompts import TEMPLATES
from kon_ray.results import write_atomic, write_json
from kon_ray.run_identity import RERANK_KEYS, RunIdentity, rerank_settings
from kon_ray.studies.folder import SPEC_FILE
from kon_ray.training.setup import Setup, setup

EXPORT_RECORD = "kon.json"


@dataclass
class SavedRun:
    folder: Path
    """The run's ``model/`` folder."""
    record: dict[str, Any]
    """Its ``run.json``: config, identity, dataset, steps, valid and test MRR."""
    setup: Setup
    """The run rebuilt, with its best trainable weights, in eval mode."""


def model_folder(target: str | Path) -> Path:
    """The ``model/`` folder of a run folder or a study trial (see the module's docstring)."""
    path = Path(target)
    for folder in (path / MODEL_DIR, path):
        if (folder / MODEL_RECORD).is_file() and (folder / MODEL_WEIGHTS).is_file():
            return folder
    train = _train_run(path)
    if train is not None:
        finished = sorted(p for p in train.glob(f"checkpoint_*/{MODEL_DIR}") if (p / MODEL_RECORD).is_file())
        if finished:
            return finished[-1]
        raise ConfigError(
            f"{target}: the trial's run {train} has not finished (no checkpoint holds {MODEL_DIR}/)"
        )
    raise ConfigError(
        f"{target}: not a run folder (no {MODEL_DIR}/{MODEL_RECORD}) nor a study trial "
        f"(<study folder>/<trial id>, its Tune folder, or <study folder>/train/train-<trial id>)"
    )


def _train_run(path: Path) -> Path | None:
    """The Ray Train run folder of a study trial given as any of its three names, if it is one."""
    if path.name.startswith("train-") and path.is_dir():
        return path
    if (path.parent / SPEC_FILE).is_file():
        trial = path.name
        result = path / "result.json"
        if result.is_file():  # a Tune trial folder: its results name the trial
            first = result.read_text().split("\n", 1)[0]
            trial = json.loads(first)["trial_id"] if first.strip() else trial
        train = path.parent / "train" / f"train-{trial}"
        return train if train.is_dir() else None
    return None


def load_run(
    target: str | Path, overrides: Sequence[str] = (), device: torch.device | None = None
) -> SavedRun:
    """Rebuild the run in ``target`` with its best weights; ``overrides`` may change only how it is
    ranked (``RERANK_KEYS``)."""
    from transformers import AutoTokenizer

    folder = model_folder(target)
    record = json.loads((folder / MODEL_RECORD).read_text())
    config = RunConfig.from_dict(record["config"])
    for item in overrides:
        if not item.startswith(RERANK_KEYS):
            raise ConfigError(
                f"{item}: a saved run is ranked as it was trained; only {rerank_settings()} may change"
            )
    config = apply_overrides(config, list(overrides))
    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = 0  # as kon_ray.backbone.load_tokenizer
    s = setup(config, device or torch.device("cpu"), tokenizer)
    differences = s.identity.differences(RunIdentity.from_dict(record["identity"]))
    if differences:
        raise ConfigError(f"{folder} was trained on other data or another backbone: {'; '.join(differences)}")
    load_trainable(s.model, load_file(str(folder / MODEL_WEIGHTS), device=str(s.device)))
    s.model.eval()
    return SavedRun(folder, record, s)


def export(run: SavedRun, out: Path) -> list[Path]:
    """Write ``run`` as a peft adapter (or a whole model), K-ON heads and settings; returns the paths written.

    A LoRA-tuned pretrained backbone gives ``adapter/`` (peft's format, for
    ``PeftModel.from_pretrained`` on the base); a fully tuned one, or the embedded backbone,
    gives the whole model in ``model/`` (``save_pretrained``). Beside it: ``tokenizer/``,
    ``kon_heads.safetensors`` (the K-ON heads' state dict), ``entities.safetensors`` (eq. 8's
    token table ``tokens`` and ``mask``), ``entities.txt`` and ``relations.txt`` (names, line i
    = id i) and ``kon.json``, the settings that rebuild the heads and the prompts.
    """
    s = run.setup
    model = s.model
    out.mkdir(parents=True, exist_ok=True)
    pretrained = s.config.model.backbone != EMBEDDED
    if s.config.model.tuning == "lora" and pretrained:
        weights = out / "adapter"
        # LoRA on the embeddings trains no embedding weight: the base's own stay out of the adapter.
        model.backbone.save_pretrained(str(weights), save_embedding_layers=False)
        _absolute_base(weights / "adapter_config.json", s.config.model.backbone)
    else:
        weights = out / "model"
        merge = getattr(model.backbone, "merge_and_unload", None)  # LoRA on the embedded backbone
        base = merge() if merge is not None else model.base
        base.save_pretrained(str(weights))
    s.tokenizer.save_pretrained(str(out / "tokenizer"))
    heads = {name: value.detach().cpu().contiguous() for name, value in model.kon.state_dict().items()}
    save_file(heads, str(out / "kon_heads.safetensors"))
    table = {"tokens": s.encoded.entity_tokens, "mask": s.encoded.entity_mask}
    save_file(table, str(out / "entities.safetensors"))
    write_atomic(out / "entities.txt", ("\n".join(s.kg.entity_names) + "\n").encode())
    write_atomic(out / "relations.txt", ("\n".join(s.kg.relation_names) + "\n").encode())
    vocab, dim = model.output_weight.shape
    backbone = s.config.model.backbone
    write_json(out / EXPORT_RECORD, {
        "backbone": str(Path(backbone).resolve()) if pretrained and Path(backbone).is_dir() else backbone,
        "weights": weights.name,
        "model": dataclasses.asdict(s.config.model),
        "hidden_size": dim,
        "vocab_size": vocab,
        "prompt": {"template": s.config.data.prompt, "tail": TEMPLATES[s.config.data.prompt][0],
                   "head": TEMPLATES[s.config.data.prompt][1]},
        "dataset": s.kg.name,
        "data_hash": s.kg.digest,
        "entities": s.kg.num_entities,
        "score": "log p^e of eq. 11 (model.score_space='probability') or a logit score ('logit')",
    })  # fmt: skip
    names = ("tokenizer", "kon_heads.safetensors", "entities.safetensors", "entities.txt", "relations.txt",
             EXPORT_RECORD)  # fmt: skip
    return [weights, *(out / name for name in names)]


def _absolute_base(adapter_config: Path, backbone: str) -> None:
    """peft records the base as it was given; a relative folder would not load from elsewhere."""
    if Path(backbone).is_dir():
        values = json.loads(adapter_config.read_text())
        values["base_model_name_or_path"] = str(Path(backbone).resolve())
        write_json(adapter_config, values)
