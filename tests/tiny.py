"""Tiny models and tokenizers built on the fly, for tests: no downloads, a second or less.
Imports torch only when a model is built, so torch-free tests stay light.

``tiny_tokenizer()`` is a byte-level BPE trained on a few sentences (so it encodes any text);
``tiny_model(tokenizer)`` is a 2-layer Llama; ``save_tiny(path)`` writes both where
``models.load(path)`` reads them, as a stand-in for a hub model.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from secondthoughts.data import Example

CORPUS = [
    "It is wrong to hit people. Tom hits his brother when he is angry.",
    "Tom talks to his brother when he is angry, and they make up.",
    "You should pay back your friends. Rose hopes her friend forgets the money she owes.",
    "Rose offers to pay for her friend's movie ticket to pay her back.",
    "Hector swerves out of his lane and drives in the empty, closed lanes.",
    "Hector slowly creeps forward through traffic and makes it home safely.",
    "0123456789 <|> \\ \" ' , . ; : ! ? ( ) - the a an of to in on and or is are was were",
]

EXAMPLES = [
    Example("It is wrong to hit people.", "Tom hits his brother.", "Tom talks to his brother.", "ex0"),
    Example("You should pay back friends.", "Rose hopes her friend forgets.", "Rose pays her friend back.", "ex1"),
    Example("Drive safely.", "Hector swerves out of his lane.", "Hector slowly creeps forward.", "ex2"),
    Example("", "They are angry and hit him.", "They are angry and talk to him.", "ex3"),
    Example("It is good to help.", "Rose ignores the money she owes.", "Rose offers to pay the money back.", "ex4"),
    Example("Be kind.", "He is rude to his friend.", "He is kind to his friend.", "ex5"),
]


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    return tok.to_str()


def tiny_tokenizer() -> Any:
    """A fresh tokenizer each call (tests add tokens to it)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        eos_token="<|endoftext|>",
        pad_token="<|pad|>",
    )


def tiny_model(tokenizer: Any, *, seed: int = 0, layers: int = 2, hidden: int = 32, tied: bool = True) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=tied,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny(path: str | Path, *, seed: int = 0, tied: bool = True) -> Path:
    """Write a tiny model + tokenizer as a local model folder; returns the path."""
    path = Path(path)
    tok = tiny_tokenizer()
    tiny_model(tok, seed=seed, tied=tied).save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def write_examples_jsonl(path: str | Path, n: int = 24) -> Path:
    """``n`` examples cycling through EXAMPLES with distinct ids."""
    from secondthoughts.data import write_examples

    rows = [Example(e.context, e.source, e.target, f"{e.id}-{k}") for k in range(n) for e in [EXAMPLES[k % len(EXAMPLES)]]]
    write_examples(path, rows)
    return Path(path)


def save_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide BERT whose WordPiece vocabulary holds the fixture's words, saved as a model
    folder: a stand-in for the reward model's encoder (all-MiniLM-L6-v2)."""
    import re

    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for e in EXAMPLES for t in (e.context, e.source, e.target) for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tok = BertTokenizer(vocab=str(path / "vocab.txt"))
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)).save_pretrained(path)
    tok.save_pretrained(path)
    return path



@contextlib.contextmanager
def peft_forwards(model: Any) -> Iterator[None]:
    """PEFT's own forward for the trainable token layers that ``token_rows.lean_token_rows``
    changed, while inside: what the lean rows are checked against."""
    lean = {m: vars(m).pop("forward") for m in model.modules() if "forward" in vars(m) and hasattr(m, "trainable_tokens_delta")}
    try:
        yield
    finally:
        for m, f in lean.items():
            m.forward = f
