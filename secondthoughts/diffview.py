"""Views of a chain: one diff model (``segments``) and what it is drawn as.

``segments`` cuts the source into the pieces an inline diff shows; every view of a chain reads
them: the terminal (``inline_diff``, a rich ``Text``), the web editor (``api_messages.diff_segments``,
JSON) and reports (``html_diff``, ``<del>`` / ``<ins>`` for markdown). ``chain_stats`` counts edits
per operation for the terminal.
"""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich.text import Text

from secondthoughts.edits import Edit, detokenize

SAME, DEL, INS, OFF = "same", "del", "ins", "off"


@dataclass(frozen=True)
class Segment:
    """One piece of an inline diff. ``kind``: ``same`` (source text no edit touches), ``del``
    (source text an accepted edit removes), ``ins`` (text an accepted edit writes) or ``off`` (the
    source text of a rejected edit, which stays). ``edit``: the edit's index in the chain (None for
    ``same``). Never empty."""

    kind: str
    text: str
    edit: int | None = None


def segments(source_tokens: Sequence[str], edits: Iterable[Edit], keep: Sequence[bool] | None = None) -> list[Segment]:
    """The inline diff of ``edits`` on the source, in source order. ``keep[i]`` False marks edit
    ``i`` rejected (its source text stays, as ``off``); by default every edit is accepted.

    Read back: the ``same``, ``del`` and ``off`` texts make the source; ``same``, ``ins`` and
    ``off`` the text with the accepted edits applied."""
    chain = list(edits)
    flags = [True] * len(chain) if keep is None else list(keep)
    if len(flags) != len(chain):
        raise ValueError(f"{len(flags)} keep flags for a chain of {len(chain)} edits")
    out: list[Segment] = []

    def add(kind: str, tokens: Sequence[str], edit: int | None) -> None:
        text = detokenize(tokens)
        if text:
            out.append(Segment(kind, text, edit))

    cursor = 0
    for i, (e, accepted) in enumerate(zip(chain, flags)):
        add(SAME, source_tokens[cursor : e.start], None)
        if accepted:
            add(DEL, e.old, i)  # type: ignore[arg-type]
            add(INS, e.new, i)  # type: ignore[arg-type]
        else:
            add(OFF, e.old, i)  # type: ignore[arg-type]
        cursor = e.end
    add(SAME, source_tokens[cursor:], None)
    return out


# How each view draws a kind (``same`` and ``off`` are plain text in the terminal and in reports).
TERMINAL_STYLES = {DEL: "bold red strike", INS: "bold green underline"}
HTML_TAGS = {DEL: "del", INS: "ins"}


def inline_diff(source_tokens: Sequence[str], edits: Iterable[Edit], keep: Sequence[bool] | None = None) -> Text:
    """Source with removed spans struck through in red and written spans in green."""
    out = Text()
    for s in segments(source_tokens, edits, keep):
        out.append(s.text, style=TERMINAL_STYLES.get(s.kind))
    return out


def html_diff(source_tokens: Sequence[str], edits: Iterable[Edit], keep: Sequence[bool] | None = None) -> str:
    """The inline diff as HTML: ``<del>`` removed, ``<ins>`` written, all text escaped (tags
    keep the spaces that markdown's ``~~...~~`` would break on)."""
    parts = []
    for s in segments(source_tokens, edits, keep):
        text = html.escape(s.text, quote=False)
        tag = HTML_TAGS.get(s.kind)
        parts.append(f"<{tag}>{text}</{tag}>" if tag else text)
    return "".join(parts)


def chain_stats(edits: Iterable[Edit]) -> dict[str, int]:
    """Edits per operation and tokens removed / written."""
    stats: Counter[str] = Counter({"insert": 0, "delete": 0, "replace": 0, "tokens_removed": 0, "tokens_written": 0})
    for e in edits:
        stats[e.op] += 1
        stats["tokens_removed"] += len(e.old)
        stats["tokens_written"] += len(e.new)
    return dict(stats)
