"""Untrusted text in a prompt: web pages, search results, anything a plugin brings in from
outside. Each piece goes between a begin line naming its kind, number and source and an end
line; the text inside cannot forge either line, since runs of "<<<" in it are shortened."""

from __future__ import annotations

BEGIN = "<<<BEGIN UNTRUSTED {kind} {number}: {source}>>>"
END = "<<<END UNTRUSTED {kind} {number}>>>"
CUT = "\n[cut: the page has more text]"


def defused(text: str) -> str:
    """`text` without "<<<", so that it cannot open or close a block."""
    while "<<<" in text:
        text = text.replace("<<<", "<<")
    return text


def untrusted_block(kind: str, number: int, source: str, body: str, max_chars: int) -> str:
    """`body` (defused, cut to `max_chars` and marked with CUT when longer) between the
    begin and end lines of block `number` of `kind` (e.g. "PAGE"), the begin line naming
    `source` (defused too)."""
    text = defused(body)
    if len(text) > max_chars:
        text = text[:max_chars] + CUT
    begin = BEGIN.format(kind=kind, number=number, source=defused(source))
    return f"{begin}\n{text}\n{END.format(kind=kind, number=number)}"
