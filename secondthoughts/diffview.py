"""Terminal views of a chain: a coloured inline diff and per-operation statistics."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from rich.text import Text

from secondthoughts.edits import Edit, detokenize


def inline_diff(source_tokens: Sequence[str], edits: Iterable[Edit]) -> Text:
    """Source with removed spans struck through in red and written spans in green."""
    out = Text()
    cursor = 0
    for e in edits:
        out.append(detokenize(source_tokens[cursor : e.start]))
        if e.old:
            out.append(detokenize(e.old), style="bold red strike")  # type: ignore[arg-type]
        if e.new:
            out.append(detokenize(e.new), style="bold green underline")  # type: ignore[arg-type]
        cursor = e.end
    out.append(detokenize(source_tokens[cursor:]))
    return out


def chain_stats(edits: Iterable[Edit]) -> dict[str, int]:
    """Edits per operation and tokens removed / written."""
    stats: Counter[str] = Counter({"insert": 0, "delete": 0, "replace": 0, "tokens_removed": 0, "tokens_written": 0})
    for e in edits:
        stats[e.op] += 1
        stats["tokens_removed"] += len(e.old)
        stats["tokens_written"] += len(e.new)
    return dict(stats)
