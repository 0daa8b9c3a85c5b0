"""Rating heads: the Align and Coherence a reader would give a candidate re-alignment, learned from
people's ratings of a model's own best-of-N candidates (docs/coherence.md: the shipped heads
learned from rounds 18-23, continued on rounds 24-27, then on rounds 28-35).

Two linear heads over the end-of-sequence token of the embedded SmolLM2's first decoder layers
(LoRA r16 on every linear layer), reading ``CONTEXT\\nOriginal: SOURCE\\nRewrite: TEXT``. Within a
story they rank candidates the way readers do better than anything else the project has (the
second-stage heads, rounds 32-33: 0.75 of Align pairs against the best-of score's 0.59; Coherence
0.79 against 0.76), yet picking by them alone trades coherence for alignment. So they weigh in
beside the best-of score: added to it (:func:`heads_added`, the default: read blind on 812 new
stories with coherence weighted 1, more coherent texts, alignment level; weighted 0.5 since round
35, more aligned, coherence level; the heads continued on rounds 28-35 since round 36, more
aligned; docs/coherence.md, rounds 30-36), or choosing among the candidates it ranks
highest (:func:`top_then_heads`, the default of rounds 26-33: more aligned texts, coherence level).
``benchmarks/learned_heads.py`` trains them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secondthoughts.decoding import HEADS_TOP

SCALES = ("align", "coh")
# The heads shipped in the package (their card: README.md there).
SHIPPED = Path(__file__).parent / "examples" / "rating-heads"


class RatingHeads(torch.nn.Module):
    """The embedded SmolLM2's first ``layers`` decoder layers with LoRA, and a 2-output head."""

    def __init__(self, body: torch.nn.Module, layers: int):
        from transformers import AutoTokenizer

        from secondthoughts.models import embedded_dir

        super().__init__()
        self.body, self.layers = body, layers
        self.head = torch.nn.Linear(body.config.hidden_size, len(SCALES))
        torch.nn.init.zeros_(self.head.weight), torch.nn.init.zeros_(self.head.bias)
        self.tok = AutoTokenizer.from_pretrained(str(embedded_dir()))

    @staticmethod
    def base(layers: int) -> torch.nn.Module:
        import transformers
        from transformers import AutoModel

        from secondthoughts.models import embedded_dir

        transformers.logging.set_verbosity_error()  # the layers left out and the LM head are meant to go unused
        return AutoModel.from_pretrained(str(embedded_dir()), num_hidden_layers=layers, dtype=torch.float32)

    @classmethod
    def new(cls, layers: int) -> RatingHeads:
        from peft import LoraConfig, get_peft_model

        # models.apply_lora's settings; not that function, whose CAUSAL_LM task wraps a model with an LM head
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
        return cls(get_peft_model(cls.base(layers), lora), layers)

    @staticmethod
    def prompt(context: str, source: str) -> str:
        return f"{context}\nOriginal: {source}\nRewrite:"

    def ids(self, context: str, source: str, text: str) -> list[int]:
        return self.tok(f"{self.prompt(context, source)} {text}")["input_ids"] + [self.tok.eos_token_id]

    def forward(self, cands: list[dict[str, str]]) -> torch.Tensor:
        """(n, 2) raw scores of candidates given as ``{"context", "source", "text"}``."""
        ids = [self.ids(c["context"], c["source"], c["text"]) for c in cands]
        dev = self.head.weight.device
        batch, mask = (x.to(dev) for x in right_padded(ids))
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            hidden = self.body(input_ids=batch, attention_mask=mask).last_hidden_state
        return self.head(hidden[torch.arange(len(ids), device=dev), mask.sum(1) - 1].float())

    @torch.inference_mode()
    def score(self, context: str, source: str, texts: list[str]) -> np.ndarray:
        """One story's texts: (n, 2) raw Align and Coherence scores, as :meth:`forward` gives them.
        Their shared prompt (context and source) runs through the layers once, its cache repeated
        for the texts (``decoding.repeated_prompt_cache``): most of each input is that prompt."""
        from secondthoughts.decoding import repeated_prompt_cache

        if not texts:
            return np.zeros((0, len(SCALES)), dtype=np.float32)
        prompt = self.tok(self.prompt(context, source))["input_ids"]
        rows = [self.ids(context, source, t) for t in texts]
        if any(r[: len(prompt)] != prompt for r in rows):  # a text merged into the prompt's last token
            return self([{"context": context, "source": source, "text": t} for t in texts]).float().cpu().numpy()
        dev, n, wp = self.head.weight.device, len(rows), len(prompt)
        head = torch.tensor([prompt], device=dev)
        tail, mask = right_padded([r[wp:] for r in rows])  # each at least the end-of-sequence token
        wt = tail.shape[1]
        attn = torch.cat([torch.ones((n, wp), dtype=torch.long), mask], 1).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):  # the prompt too, as forward() runs it
            cache = repeated_prompt_cache(self.body, head, torch.ones_like(head), n)
            hidden = self.body(input_ids=tail.to(dev), attention_mask=attn, position_ids=torch.arange(wp, wp + wt, device=dev).expand(n, -1),
                               past_key_values=cache, use_cache=True).last_hidden_state  # fmt: skip
        last = hidden[torch.arange(n, device=dev), mask.sum(1).to(dev) - 1].float()
        return self.head(last).cpu().numpy()

    def save(self, out: Path, meta: dict[str, Any], dtype: torch.dtype = torch.float32, card: str | None = None) -> None:
        """Atomically: a crash leaves no half-written folder. ``dtype`` float16 halves what ships;
        ``card``: the heads' README.md."""
        from safetensors.torch import save_file

        from secondthoughts.atomic import write_dir

        def write(tmp: Path) -> None:
            state = {k: v.detach().to(dtype) for k, v in self.body.state_dict().items() if "lora_" in k}
            self.body.save_pretrained(tmp / "lora", state_dict=state)
            (tmp / "lora" / "README.md").unlink(missing_ok=True)  # PEFT's blank card template; the heads' card is ours
            config = json.loads((tmp / "lora" / "adapter_config.json").read_text())
            config["base_model_name_or_path"] = None  # a local cache path; load() always builds on the embedded model
            (tmp / "lora" / "adapter_config.json").write_text(json.dumps(config, indent=2))
            save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, tmp / "head.safetensors")
            (tmp / "heads.json").write_text(json.dumps({"layers": self.layers, "base": base_stamp(), **meta}, indent=1))
            if card is not None:
                (tmp / "README.md").write_text(card, encoding="utf-8")

        write_dir(out, write)

    @classmethod
    def load(cls, folder: str | os.PathLike[str], device: torch.device | str | None = None, trainable: bool = False) -> RatingHeads:
        """Heads saved by :meth:`save`, in eval mode; ``trainable``: their LoRA left trainable, to continue them on new ratings."""
        from peft import PeftModel
        from safetensors.torch import load_file

        from secondthoughts.models import default_device

        folder = Path(folder)
        meta = json.loads((folder / "heads.json").read_text())
        if meta.get("base", base_stamp()) != base_stamp():
            raise ValueError(f"{folder}: trained on another embedded model ({meta['base']}), not {base_stamp()}")
        heads = cls(PeftModel.from_pretrained(cls.base(meta["layers"]), str(folder / "lora"), is_trainable=trainable), meta["layers"])
        heads.head.load_state_dict(load_file(folder / "head.safetensors"))
        return heads.to(torch.float32).to(device or default_device()).eval()  # on a GPU where there is one, as the models are


def right_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows padded on the right (0s) and their attention mask: a row's last real token is at len - 1."""
    ids = torch.zeros((len(rows), max(map(len, rows))), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    return ids, mask


def base_stamp() -> dict[str, Any]:
    """Which embedded model heads are trained on: their LoRA only fits that one."""
    from secondthoughts.models import embedded_gguf_path

    gguf = embedded_gguf_path()
    return {"gguf": gguf.name, "bytes": gguf.stat().st_size}


def is_heads_folder(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / "heads.json").is_file()


def heads_path(spec: str) -> Path:
    """``--heads``'s folder: ``shipped`` is the package's. A one-line error for anything else that is
    not a folder of rating heads (checked before any model loads)."""
    path = SHIPPED if spec == "shipped" else Path(spec)
    if not is_heads_folder(path):
        raise ValueError(f"--heads {spec}: no heads.json in {path} (rating heads written by benchmarks/learned_heads.py train, or 'none')")
    return path


def standardised(x: np.ndarray) -> np.ndarray:
    """Each column's z-scores within a story (a constant column: zeros)."""
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 0, sd, 1.0)


def top_then_heads(base: list[float] | np.ndarray, heads: np.ndarray, top: int = HEADS_TOP) -> int:
    """The index kept: of the ``top`` candidates the base score ranks highest, the one with the
    highest sum of the two heads' scores, each standardised over *all* the story's candidates (as
    chosen and tested: a head's spread among the few kept would weigh the two otherwise). Ties go to
    the better base score, then to the first."""
    if not len(base):
        raise ValueError("no candidate to choose from")
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    order = sorted(range(len(base)), key=lambda i: -base[i])[:top]  # stable: equal scores keep their order
    z = standardised(np.asarray(heads, dtype=float)).sum(1)
    return max(order, key=lambda i: z[i])  # max keeps the first of equal keys: the better base score


def heads_added(base: list[float] | np.ndarray, heads: np.ndarray, weights: tuple[float, float]) -> int:
    """The index kept: the highest base score plus ``weights`` (Align, Coherence) times the two
    heads' scores, each standardised over all the story's candidates. Unlike
    :func:`top_then_heads` every candidate may win, and a head weighted 0 cannot trade the
    score away for its own scale. Ties go to the first."""
    if not len(base):
        raise ValueError("no candidate to choose from")
    total = np.asarray(base, dtype=float) + standardised(np.asarray(heads, dtype=float)) @ np.asarray(weights, dtype=float)
    return int(np.argmax(total))  # argmax keeps the first of equal totals
