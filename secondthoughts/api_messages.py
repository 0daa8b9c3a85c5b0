"""What the editor's JSON API reads and writes: request fields checked into chains and flags (a
400 for a malformed request, 422 for a chain that does not fit its text), and the views of a
chain that every answer carries (edit records and the inline diff)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from secondthoughts.edits import Edit, EditError, detokenize, tokenize
from secondthoughts.readable import (
    apply_subset,
    as_chain,
    parse_readable,
    render_readable,
)

MAX_DEPTH = 16  # JSON nesting: a chain of edit records needs 4
SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


def busy(message: str, retry_after: int) -> ApiError:
    return ApiError(503, f"{message}; try again in {retry_after} s", {"Retry-After": str(retry_after)})


def parse_body(raw: bytes) -> dict[str, Any]:
    """A request body: a JSON object of text that the API can take (else 400)."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ApiError(400, f"request body is not UTF-8: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise ApiError(400, f"request body: JSON nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # JSONDecodeError, and integers too long to convert
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(body).__name__}")
    check_json(body)
    return body


# ---------------------------------------------------------------- reading requests


def check_json(body: Any) -> None:
    """Refuse what ``json.loads`` lets through but nothing after it can take: lone surrogates
    (not text: no UTF-8 encoding, no tokenizer) and nesting deeper than ``MAX_DEPTH``."""
    stack: list[tuple[Any, int, str]] = [(body, 0, "request body")]
    while stack:  # a loop, not recursion: the depth is what is being checked
        value, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"{where}: JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            if m := SURROGATE.search(value):
                raise ApiError(400, f"{where}: contains a lone surrogate ({ascii(m.group())}), which is not text")
        elif isinstance(value, dict):
            for key, item in value.items():
                if m := SURROGATE.search(key):
                    raise ApiError(400, f"{where}: a key contains a lone surrogate ({ascii(m.group())}), which is not text")
                stack.append((item, depth + 1, f"field {key!r}" if depth == 0 else where))
        elif isinstance(value, list):
            stack.extend((item, depth + 1, where) for item in value)


def text_field(body: Mapping[str, Any], name: str, *, required: bool = True) -> str:
    value = body.get(name, None if required else "")
    if value is None:
        raise ApiError(400, f"field {name!r}: missing")
    if not isinstance(value, str):
        raise ApiError(400, f"field {name!r}: expected a string, got {type(value).__name__}")
    if required and not value.strip():
        raise ApiError(400, f"field {name!r}: empty")
    return value


def read_edit(item: Mapping[str, Any], where: str) -> Edit:
    """An edit record: op, start, and old / new as lists of token strings."""
    op, start = item.get("op"), item.get("start")
    if not isinstance(op, str):
        raise ApiError(400, f"{where}: 'op' must be a string")
    if not isinstance(start, int) or isinstance(start, bool):
        raise ApiError(400, f"{where}: 'start' must be an integer")
    for key in ("old", "new"):
        tokens = item.get(key, [])
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ApiError(400, f"{where}: {key!r} must be a list of token strings")
    try:
        return Edit.from_dict(dict(item))
    except (TypeError, ValueError) as e:  # EditError is a ValueError
        raise ApiError(400, f"{where}: {e}") from None


def chain_field(body: Mapping[str, Any], name: str, source: str) -> list[Edit]:
    """The chain in field ``name``: a compact or readable string, or a list of edit records and
    ``{"readable": LINE}`` items. Structure errors are 400, chains that do not fit are 422."""
    value = body.get(name)
    if value is None:
        raise ApiError(400, f"field {name!r}: missing")
    try:
        if isinstance(value, str):
            return as_chain(value, source, what=f"field {name!r}")[0]
        if not isinstance(value, list):
            raise ApiError(400, f"field {name!r}: expected a list of edits or a string, got {type(value).__name__}")
        edits: list[Edit] = []
        for i, item in enumerate(value):
            where = f"field {name!r}, edit {i + 1}"
            if not isinstance(item, dict):
                raise ApiError(400, f"{where}: expected an object, got {type(item).__name__}")
            if "readable" in item:
                if not isinstance(item["readable"], str) or not item["readable"].strip():
                    raise ApiError(400, f"{where}: 'readable' must be a non-empty line")
                edits.append(read_line(item["readable"], source, edits, where))
            else:
                edits.append(read_edit(item, where))
        return as_chain(edits, source, what=f"field {name!r}")[0]
    except ValueError as e:  # EditError, and what the parsers let escape (e.g. a JSONDecodeError)
        raise ApiError(422, str(e) if isinstance(e, EditError) else f"field {name!r} cannot be read: {e}") from None


def read_line(line: str, source: str, before: Sequence[Edit], where: str) -> Edit:
    """One readable line, looked up where the edits ``before`` end. Their rendered lines parse
    back to exactly those edits, so prepending them sets parse_readable's cursor."""
    if "\n" in line.strip() or "\r" in line.strip():
        raise ApiError(400, f"{where}: one line only")
    head = render_readable(before, source) if before else ""
    try:
        parsed = parse_readable(f"{head}\n{line.strip()}" if head else line.strip(), source)
    except ValueError as e:  # EditError, and what the parser lets escape (e.g. a JSONDecodeError)
        raise EditError(f"{where}: {e}") from None
    if len(parsed) != len(before) + 1:
        raise EditError(f"{where}: {line!r} is not an edit")
    return parsed[-1]


def read_keep(body: Mapping[str, Any], n: int) -> list[bool]:
    keep = body.get("keep")
    if keep is None:
        return [True] * n
    if not isinstance(keep, list) or not all(isinstance(k, bool) for k in keep):
        raise ApiError(400, "field 'keep': expected a list of true / false, one per edit")
    if len(keep) != n:
        raise ApiError(400, f"field 'keep': {len(keep)} flags for a chain of {n} edits")
    return keep


@dataclass
class RealignRequest:
    """A request for the model: /api/realign and /api/continue. ``options`` go to
    ``Realigner.realign`` as keyword arguments (the place for per-request search settings)."""

    context: str
    source: str
    prefix: list[Edit] | None = None
    options: dict[str, Any] | None = None

    @classmethod
    def read(cls, body: Mapping[str, Any], *, prefix_required: bool = False) -> RealignRequest:
        context, source = text_field(body, "context", required=False), text_field(body, "source")
        prefix = chain_field(body, "prefix", source) if prefix_required or body.get("prefix") else None
        return cls(context, source, prefix, {})


# ---------------------------------------------------------------- views


def edit_view(chain: Sequence[Edit], source: str) -> list[dict[str, Any]]:
    """One record per edit: ``Edit.to_dict()`` (what the page sends back) plus what it shows."""
    lines = render_readable(chain, source).splitlines() if chain else []
    return [
        {**e.to_dict(), "end": e.end, "old_text": detokenize(e.old), "new_text": detokenize(e.new), "readable": line}  # type: ignore[arg-type]
        for e, line in zip(chain, lines)
    ]


def diff_segments(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> list[dict[str, Any]]:
    """The inline diff as a list of {kind, text, edit}: ``diffview.segments`` as JSON (kind "same",
    "del", "ins", or "off" for a rejected edit's source text; edit: its index in the chain)."""
    from secondthoughts.diffview import segments

    return [asdict(s) for s in segments(tokenize(source), chain, keep)]


def chain_view(source: str, chain: Sequence[Edit], keep: Sequence[bool]) -> dict[str, Any]:
    return {
        "text": apply_subset(source, chain, keep),
        "edits": edit_view(chain, source),
        "segments": diff_segments(source, chain, keep),
        "keep": list(keep),
    }
