"""HTML to plain text, with the standard library's parser: what a fetched page says, without
its markup, scripts or styles."""

from __future__ import annotations

from html.parser import HTMLParser

_SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "iframe", "object"})
_BLOCK_TAGS = (
    "address article aside blockquote br dd div dl dt figcaption footer form h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table td th title tr ul"
)
_BLOCKS = frozenset(_BLOCK_TAGS.split())


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.skipping = 0
        self.preformatted = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skipping += 1
        elif tag in _BLOCKS:
            self.pieces.append("\n")
        if tag == "pre":
            self.preformatted += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skipping = max(0, self.skipping - 1)
        elif tag in _BLOCKS:
            self.pieces.append("\n")
        if tag == "pre":
            self.preformatted = max(0, self.preformatted - 1)

    # Python 3.11's parser raises AssertionError on some malformed declarations ("<![ x ]>"):
    # a page must not be able to make itself unreadable, so such a declaration is skipped.
    def parse_marked_section(self, i: int, report: bool = True) -> int:
        try:
            return super().parse_marked_section(i, report)
        except AssertionError:
            return self._skip_declaration(i)

    def parse_declaration(self, i: int) -> int:
        try:
            return super().parse_declaration(i)
        except AssertionError:
            return self._skip_declaration(i)

    def _skip_declaration(self, i: int) -> int:
        end = self.rawdata.find(">", i)
        return -1 if end < 0 else end + 1

    def handle_data(self, data: str) -> None:
        if not self.skipping:  # line breaks in the source are spaces, except in <pre>
            self.pieces.append(data if self.preformatted else " ".join(data.splitlines()))


def html_to_text(html: str) -> str:
    """The readable text of an HTML page: no scripts or styles, one line per block (and per
    line of preformatted text), the whitespace inside lines collapsed, no empty lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.pieces).split("\n"))
    return "\n".join(line for line in lines if line)
