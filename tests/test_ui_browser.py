"""`/ui/spl` and `/ui/playground` rendered by a real headless Chromium (Debian's /usr/bin/chromium).

Skipped when Chromium is missing, unless PONDER_REQUIRE_SERVICES=1 (as in CI), which makes a
missing browser a failure instead of a silent skip.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from ponder.config import Settings
from ponder.proxy import create_app
from ponder.spl_store import Draft, Store
from ponder.testing import running_server
from tests import services
from tests.conftest import MODEL, scripted, sse_events

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@pytest.fixture(scope="module")
def chromium() -> str:
    return services.chromium()


def dump_dom(chromium: str, url: str, profile: Path, *flags: str) -> str:
    """The DOM after Chromium loaded and rendered `url`."""
    done = subprocess.run(
        [chromium, *CHROMIUM_FLAGS, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Elements(HTMLParser):
    """The text inside each element that has an id, and every element's classes by id."""

    def __init__(self) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.classes: dict[str, list[str]] = {}
        self.headings: list[str] = []
        self._open: list[tuple[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        ident = found.get("id")
        if ident:
            self.text[ident] = ""
            self.classes[ident] = (found.get("class") or "").split()
        if tag not in {"meta", "br", "link"}:
            self._open.append((tag, ident))

    def handle_endtag(self, tag: str) -> None:
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] += data
        if self._open and self._open[-1][0] == "h2":
            self.headings.append(data)


def parse(dom: str) -> Elements:
    elements = Elements()
    elements.feed(dom)
    return elements


@pytest.fixture
def seeded(store: Store) -> Iterator[tuple[Store, list[int]]]:
    texts = [
        ("arithmetic", "Write down every intermediate result.\nCheck the units.", "active", 4, 3),
        ("arithmetic", "Estimate first & compare <the> result.", "candidate", 0, 0),
        ("logic", "List the known facts before deducing.", "retired", 10, 2),
    ]
    ids = []
    for problem_type, text, status, attempts, successes in texts:
        record = store.add_strategy(
            "a", Draft(problem_type, text, status, attempts, successes), origin="learned"
        )
        assert record is not None
        ids.append(record.id)
    store.add_strategy("b", Draft("coding", "Tenant b's only strategy."), origin="learned")
    yield store, ids


def test_the_page_renders_every_strategy_in_a_browser(
    chromium: str, seeded: tuple[Store, list[int]], tmp_path: Path
) -> None:
    store, (s1, s2, s3) = seeded
    store.edit_text(
        "a",
        s1,
        "Write down every intermediate result.\nCheck the units.\nTwice.",
        expected_version=1,
        kind="edited",
    )
    app = create_app(
        Settings(api_keys=["a:key-a", "b:key-b"]), backend=scripted(["x"]), store=store
    )
    with running_server(app) as base:
        host = base.removeprefix("http://").removesuffix("/v1")
        dom = dump_dom(chromium, f"http://a:key-a@{host}/ui/spl", tmp_path / "profile")

    page = parse(dom)
    assert page.text["tenant"] == "a"
    assert page.headings == ["arithmetic", "logic"]
    assert "type-coding" not in page.text  # tenant b's strategy is not on a's page
    assert "Tenant b" not in dom

    expected = {
        s1: (
            "Write down every intermediate result.\nCheck the units.\nTwice.",
            "active",
            "75% (3/4)",
            "version 2",
        ),
        s2: ("Estimate first & compare <the> result.", "candidate", "- (0/0)", "version 1"),
        s3: ("List the known facts before deducing.", "retired", "20% (2/10)", "version 1"),
    }
    for ident, (text, status, rate, version) in expected.items():
        element = f"strategy-{ident}"
        assert page.classes[element] == ["strategy", f"status-{status}"]
        content = page.text[element]
        assert text in content
        assert status in content and rate in content and version in content
        assert "learned" in content
    # each strategy sits in its problem type's section
    assert "Twice." in page.text["type-arithmetic"]
    assert "Estimate first" in page.text["type-arithmetic"]
    assert "List the known facts" not in page.text["type-arithmetic"]
    assert "List the known facts" in page.text["type-logic"]
    # the history is in the page (in a closed <details>), newest first
    history = page.text[f"strategy-{s1}"].split("History (2 events)")[1]
    assert history.index("edited") < history.index("created")


def test_the_page_needs_credentials(
    chromium: str, seeded: tuple[Store, list[int]], tmp_path: Path
) -> None:
    store, (s1, _, _) = seeded
    app = create_app(
        Settings(api_keys=["a:key-a", "b:key-b"]), backend=scripted(["x"]), store=store
    )
    with running_server(app) as base:
        root = base.removesuffix("/v1")
        refused = httpx.get(f"{root}/ui/spl")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == 'Basic realm="ponder"'
        host = root.removeprefix("http://")

        wrong = parse(dump_dom(chromium, f"http://a:nope@{host}/ui/spl", tmp_path / "p1"))
        assert f"strategy-{s1}" not in wrong.text

        b_page = parse(dump_dom(chromium, f"http://b:key-b@{host}/ui/spl", tmp_path / "p2"))
        assert b_page.text["tenant"] == "b"
        assert b_page.headings == ["coding"]
        assert f"strategy-{s1}" not in b_page.text


def test_the_playground_asks_two_routes_side_by_side(chromium: str, tmp_path: Path) -> None:
    """The page's script streams each route into its column: answer, reasoning and tokens."""
    reply = "Six sevens.\nThe answer is 42."
    app = create_app(Settings(api_keys=["a:key-a"]), backend=scripted(lambda call, i: reply))
    query = urlencode([("q", "What is 6*7?"), ("route", "none"), ("route", "sc"), ("ask", "1")])
    with running_server(app) as base:
        # what each route reports for the same question, streamed, as the page asks it
        backend = app.state.ponder.backend
        expected, calls = {}, {}
        for route in ("none", "sc"):
            before = len(backend.calls)
            expected[route], reported = streamed_usage(base, f"{route}-{MODEL}")
            calls[route] = len(backend.calls) - before
            assert reported == calls[route]  # the stream reports the calls the backend got
        host = base.removeprefix("http://").removesuffix("/v1")
        # the virtual-time budget lets the page's fetches finish before the dump, but on a busy
        # machine a stream's pauses can use it up first: a dump taken mid-stream is taken again
        for attempt in range(3):
            page = parse(
                dump_dom(
                    chromium,
                    f"http://a:key-a@{host}/ui/playground?{query}",
                    tmp_path / f"profile-{attempt}",
                    "--virtual-time-budget=20000",
                )
            )
            if all(page.text.get(f"status-{r}") != "streaming" for r in ("none", "sc")):
                break

    for route in ("none", "sc"):
        assert page.text[f"status-{route}"] == "done", page.text.get(f"status-{route}")
        assert page.text[f"answer-{route}"] == reply
        usage = expected[route]
        assert page.text[f"tokens-{route}"] == (
            f"{usage['total_tokens']} ({usage['prompt_tokens']} in, "
            f"{usage['completion_tokens']} out)"
        )
        assert page.text[f"time-{route}"].endswith(" s")
    # each column's calls are those the backend got for the route's own request
    assert calls["sc"] > calls["none"] == 1
    assert (page.text["calls-none"], page.text["calls-sc"]) == (
        str(calls["none"]),
        str(calls["sc"]),
    )
    assert expected["sc"]["total_tokens"] > expected["none"]["total_tokens"]  # sc sampled more
    assert "Vote: 42" in page.text["reasoning-sc"]
    assert page.text["reasoning-none"] == ""
    assert page.classes["col-none"] == ["column", "done"]


def streamed_usage(base: str, model: str) -> tuple[dict[str, int], int]:
    """The usage and the backend calls a streamed request for `model` reports."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "What is 6*7?"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream(
        "POST", f"{base}/chat/completions", json=body, headers={"authorization": "Bearer key-a"}
    ) as response:
        events = sse_events(response.read().decode())
    (last,) = [e for e in events if e.get("usage")]
    found: dict[str, int] = last["usage"]
    return found, int(last["ponder"]["backend_calls"])
