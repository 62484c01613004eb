"""Tiny pretrained-style Hugging Face backbones, written offline with ``save_pretrained``.

Each family is a model config and a tokenizer of the kind its real checkpoints ship, trained
in a second with ``tokenizers`` on a KG's own names and both prompt templates:

- ``llama``: Llama config, SentencePiece-style BPE (Metaspace, a BOS token, no pad token),
  with the lone and double word-start pieces that Llama-2's vocabulary holds ('▁', '▁▁');
- ``gpt2``: GPT-2 config with tied input and output embeddings, byte-level BPE without a
  pad token (GPT-2 has none);
- ``qwen2``: Qwen2 config (grouped-query attention, tied embeddings), byte-level BPE with
  '<|endoftext|>' as its pad token, as Qwen2's tokenizer has.

The weights are random: the fixtures test the plumbing (module names, tokenizers, peft's
per-architecture LoRA targets, tied heads), not what a pretrained model knows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from kon_ray.data import load_kg
from kon_ray.data.prompts import TEMPLATES

HIDDEN, LAYERS, HEADS, FFN = 32, 2, 4, 64
VOCAB = 120  # small enough that names split into several tokens


def corpus(dataset: Path) -> list[str]:
    """The KG's entity and relation names and the prompts' own words, in sentences."""
    kg = load_kg(str(dataset))
    texts = [text for by_direction in TEMPLATES.values() for text in by_direction.values()]
    templates = [text.format(entity="", relation="") for text in texts]
    names = [*kg.entity_names, *kg.relation_names]
    # Names after a prompt, so that word-start merges (' Name', '▁Name') are learned.
    return [*templates, *names, *(f"{t} {n}" for t in templates for n in names)]


def _bpe(
    texts: list[str], pre: pre_tokenizers.PreTokenizer, special: list[str], vocab: int, **kw: object
) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(**kw))
    tokenizer.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, show_progress=False,
                                  initial_alphabet=sorted({c for t in texts for c in t}))
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def llama_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """SentencePiece-style, laid out as Llama-2's tokenizer.json: the normalizer prepends '▁' and
    turns spaces into '▁', with no pre-tokenizer; a BOS token and no pad token.

    The vocabulary holds '▁▁' with the first merge, as Llama-2's does (id 259): ' Name' alone
    then starts with '▁▁', while after a prompt the backbone reads '▁Name'.
    """
    trained = _bpe(texts, pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                   ["<unk>", "<s>", "</s>"], VOCAB, unk_token="<unk>", fuse_unk=True)
    spec = json.loads(trained.to_str())
    spec["model"]["vocab"].setdefault("▁▁", len(spec["model"]["vocab"]))
    spec["model"]["merges"].insert(0, ["▁", "▁"])
    tokenizer = Tokenizer.from_str(json.dumps(spec))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = None
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.token_to_id("<s>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def byte_level_tokenizer(texts: list[str], pad: bool) -> PreTrainedTokenizerFast:
    end = "<|endoftext|>"
    tokenizer = _bpe(texts, pre_tokenizers.ByteLevel(add_prefix_space=False), [end], VOCAB)
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=end, eos_token=end, unk_token=end,
        **({"pad_token": end} if pad else {}),
    )


def _llama(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    return LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    ))


def _gpt2(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tokenizer), n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    ))


def _qwen2(tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    return Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    ))


FAMILIES: dict[str, tuple[Callable[[list[str]], PreTrainedTokenizerFast], Callable[..., PreTrainedModel]]] = {
    "llama": (llama_tokenizer, _llama),
    "gpt2": (lambda texts: byte_level_tokenizer(texts, pad=False), _gpt2),
    "qwen2": (lambda texts: byte_level_tokenizer(texts, pad=True), _qwen2),
}


def write_backbone(family: str, dataset: Path, folder: Path, seed: int = 0) -> Path:
    """A ``save_pretrained`` folder of ``family`` (a FAMILIES key) with a tokenizer for ``dataset``."""
    import torch

    make_tokenizer, make_model = FAMILIES[family]
    tokenizer = make_tokenizer(corpus(dataset))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make_model(tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
