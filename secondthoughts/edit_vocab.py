"""The vocabulary as constrained decoding sees it: each token's bytes (byte-level BPE or
SentencePiece), the edit-token ids, and precomputed masks of the tokens that may stand inside an
edit's free text (``EditVocab``); ``scan_text`` checks escaped text byte by byte."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from secondthoughts.chain_text import DEL, EOC, INS, KEEP, NEW, OLD, REP
from secondthoughts.models import edit_token_ids

_BSL, _PIPE, _LT = ord("\\"), ord("|"), ord("<")


@functools.lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's printable stand-ins for bytes, reversed (byte-level BPE vocabularies store these)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _decoder_kind(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    state = decoder.__getstate__().decode() if decoder is not None else ""
    if '"ByteLevel"' in state:
        return "bytelevel"
    if "Metaspace" in state or "\u2581" in state:
        return "metaspace"
    return "decode"


def token_pieces(tokenizer: Any) -> list[bytes | None]:
    """The bytes each token id writes; None for added / special tokens (never plain text).

    Bytes rather than strings, because a byte-level token may hold part of a UTF-8 character.
    """
    kind = _decoder_kind(tokenizer)
    added = set(tokenizer.added_tokens_decoder)
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    bd = _byte_decoder()
    pieces: list[bytes | None] = []
    for i, name in enumerate(names):
        if i in added or name is None:
            pieces.append(None)
        elif kind == "bytelevel":
            pieces.append(bytes(bd[c] for c in name) if all(c in bd for c in name) else None)
        elif kind == "metaspace":
            m = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", name)
            pieces.append(bytes([int(m[1], 16)]) if m else name.replace("\u2581", " ").encode())
        else:
            pieces.append(tokenizer.decode([i]).encode())
    probe = "Tom hits 12 dogs, caf\u00e9 <|x \\ \u00fc\u4e2d!"
    ids = tokenizer(probe, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    got = b"".join(pieces[i] or b"?" for i in ids)
    if got.lstrip(b" ") != probe.encode():  # metaspace tokenizers prepend a space
        raise ValueError(
            f"constrained decoding cannot read this tokenizer's tokens as bytes ({type(tokenizer).__name__}, "
            f"decoder {kind}); realign with constrained=False"
        )
    return pieces


def scan_text(b: bytes, pending: bool = False, after_lt: bool = False) -> tuple[bool, bool] | None:
    """Read bytes of escaped text the way ``chain_text.escape`` writes it; None if it never would.

    The context is (a backslash is pending, the last character written was ``<``): a backslash
    only ever precedes ``\\`` or, right after ``<``, ``|``; a bare ``|`` never follows ``<``.
    Returns the context after ``b``.
    """
    for c in b:
        if pending:
            if not (c == _BSL or (c == _PIPE and after_lt)):
                return None
            pending, after_lt = False, False
        elif c == _BSL:
            pending = True
        elif c == _PIPE and after_lt:
            return None
        else:
            after_lt = c == _LT
    return pending, after_lt


@dataclass
class EditVocab:
    """A tokenizer's view for constrained decoding: token bytes, marker ids, precomputed masks."""

    pieces: list[bytes | None]
    specials: dict[int, str]  # id -> text of every added token (markers included)
    ins: int
    dele: int
    rep: int
    old: int
    new: int
    eoc: int
    eos: int | None
    by_bytes: dict[bytes, list[int]]
    max_piece: int
    digit_ids: list[int]
    text_mask: torch.Tensor  # plain text tokens
    # text_ok[(pending, after_lt)]: tokens that continue escaped text validly in that context
    text_ok: dict[tuple[bool, bool], torch.Tensor]
    keep: int | None = None  # absent in runs made before inline chains

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> EditVocab:
        pieces = token_pieces(tokenizer)
        ins, dele, rep, old, new, eoc = edit_token_ids(tokenizer, (INS, DEL, REP, OLD, NEW, EOC))
        by_bytes: dict[bytes, list[int]] = {}
        v = len(pieces)
        text = torch.zeros(v, dtype=torch.bool)
        contexts = [(p, lt) for p in (False, True) for lt in (False, True)]
        text_ok = {c: torch.zeros(v, dtype=torch.bool) for c in contexts}
        digits: list[int] = []
        for i, b in enumerate(pieces):
            if not b:
                continue
            by_bytes.setdefault(b, []).append(i)
            text[i] = True
            if b"\\" in b or b"|" in b:  # only these depend on the context
                for c in contexts:
                    text_ok[c][i] = scan_text(b, *c) is not None
            else:
                text_ok[(False, False)][i] = text_ok[(False, True)][i] = True
            if b.isdigit():
                digits.append(i)
        specials = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        keep = next((i for i, t in specials.items() if t == KEEP), None)
        return cls(
            pieces, specials, ins, dele, rep, old, new, eoc, tokenizer.eos_token_id, by_bytes,
            max(map(len, by_bytes)), digits, text, text_ok, keep,
        )  # fmt: skip

    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids as text, exactly as the processor read them (markers as their strings)."""
        out = bytearray()
        for i in ids:
            b = self.pieces[i] if i < len(self.pieces) else None
            out += b if b is not None else self.specials.get(i, "").encode()
        return out.decode("utf-8", errors="replace")

    @property
    def op_markers(self) -> dict[int, str]:
        return {self.ins: "insert", self.dele: "delete", self.rep: "replace"}


