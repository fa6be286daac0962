"""URL fetching for models: only public addresses, checked for every address of every hop and
pinned for the connection (no DNS rebinding), with time, size and content limits. Offline: a
fake resolver and httpx's MockTransport stand in for DNS and the network, except in the one test
against a real local server, which must never be reached."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import http.server
import ipaddress
import re
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from ponder.config import Settings
from ponder.sandbox import fetch as fetch_module
from ponder.sandbox.addresses import ip_literal, refusal
from ponder.sandbox.fetch import (
    USER_AGENT,
    Fetcher,
    FetchFailed,
    FetchRefused,
    FetchUrlTool,
)
from ponder.sandbox.html_text import html_to_text
from ponder.strategies.toolbox import server_tools

PUBLIC = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"
HTML = "text/html; charset=utf-8"


class FakeResolver:
    """Answers from a table: each host's list of answers, one per call (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        answers = self.answers[host]
        return answers[min(len(self.calls_for(host)) - 1, len(answers) - 1)]

    def calls_for(self, host: str) -> list[str]:
        return [h for h in self.calls if h == host]


class Network:
    """A MockTransport that records every request it sees and answers with `handler`."""

    def __init__(self, handler: Callable[[httpx.Request], httpx.Response]) -> None:
        self.requests: list[httpx.Request] = []

        def record(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return handler(request)

        self.transport = httpx.MockTransport(record)


def page(text: str = "<p>hello</p>", content_type: str = HTML) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, text=text)


def redirect(location: str, status: int = 301) -> httpx.Response:
    return httpx.Response(status, headers={"location": location})


def fetcher(
    network: Network, resolver: FakeResolver | None = None, max_bytes: int = 1_000_000
) -> Fetcher:
    resolver = resolver or FakeResolver({"example.com": [[PUBLIC]]})
    return Fetcher(resolver=resolver, transport=network.transport, max_bytes=max_bytes)


# ---- a public page ---------------------------------------------------------------------------


async def test_public_page_is_fetched_from_the_pinned_address_and_html_becomes_text() -> None:
    html = (
        "<html><head><title>Example  Domain</title><style>p { color: red }</style>"
        "<script>var secret = 1;</script></head><body><h1>Example</h1>"
        "<p>This   domain is\n for <b>use</b> in examples.</p><noscript>enable js</noscript>"
        "<ul><li>one</li><li>two &amp; three</li></ul><br/>end</body></html>"
    )
    network = Network(lambda request: page(html))
    resolver = FakeResolver({"example.com": [[PUBLIC]]})
    result = await fetcher(network, resolver).fetch("http://example.com/docs?x=1")

    assert result.url == "http://example.com/docs?x=1"
    assert (result.status, result.content_type, result.truncated) == (200, "text/html", False)
    assert result.text == (
        "Example Domain\nExample\nThis domain is for use in examples.\none\ntwo & three\nend"
    )
    (request,) = network.requests
    assert str(request.url) == f"http://{PUBLIC}/docs?x=1"
    assert request.headers["host"] == "example.com"
    assert request.headers["user-agent"] == USER_AGENT == "Ponder"
    assert "sni_hostname" not in request.extensions
    assert "cookie" not in request.headers
    assert resolver.calls == ["example.com"]


async def test_https_pins_the_address_and_verifies_tls_for_the_real_name() -> None:
    network = Network(lambda request: page("plain words", "text/plain"))
    result = await fetcher(network).fetch("https://Example.com:8443/a")
    (request,) = network.requests
    assert str(request.url) == f"https://{PUBLIC}:8443/a"
    assert request.headers["host"] == "example.com:8443"
    assert request.extensions["sni_hostname"] == "example.com"
    assert result.text == "plain words"


async def test_ipv6_address_is_pinned_in_brackets_and_ipv4_is_preferred() -> None:
    network = Network(lambda request: page("v6", "text/plain"))
    resolver = FakeResolver({"six.test": [[PUBLIC_V6]], "both.test": [[PUBLIC_V6, PUBLIC]]})
    await fetcher(network, resolver).fetch("http://six.test/")
    await fetcher(network, resolver).fetch("http://both.test/")
    assert [str(r.url) for r in network.requests] == [f"http://[{PUBLIC_V6}]/", f"http://{PUBLIC}/"]


async def test_json_xml_and_charsets_are_read_as_text() -> None:
    bodies = {
        "/json": httpx.Response(200, json={"a": 1}),
        "/xml": httpx.Response(
            200, headers={"content-type": "application/rss+xml"}, content=b"<rss>x</rss>"
        ),
        "/latin": httpx.Response(
            200, headers={"content-type": "text/plain; charset=latin-1"}, content=b"caf\xe9"
        ),
    }
    network = Network(lambda request: bodies[request.url.path])
    f = fetcher(network)
    assert (await f.fetch("http://example.com/json")).text == '{"a":1}'
    assert (await f.fetch("http://example.com/xml")).text == "<rss>x</rss>"
    assert (await f.fetch("http://example.com/latin")).text == "café"


# ---- refused addresses -------------------------------------------------------------------------

BLOCKED_URLS = [
    ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
    ("http://127.0.0.1.:8080/", "127.0.0.1 is a loopback address"),
    ("http://2130706433/", "127.0.0.1 is a loopback address"),
    ("http://0x7f.1/", "127.0.0.1 is a loopback address"),
    ("http://0x7F000001/", "127.0.0.1 is a loopback address"),
    ("http://0177.1/", "127.0.0.1 is a loopback address"),
    ("http://0x7f.0.0.0x1/", "127.0.0.1 is a loopback address"),
    ("http://127.1/", "127.0.0.1 is a loopback address"),
    ("http://[::1]/", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "a loopback address (127.0.0.1) in IPv6 form"),
    ("http://[::ffff:7f00:1]/", "a loopback address (127.0.0.1) in IPv6 form"),
    ("http://[2002:7f00:1::]/", "a loopback address (127.0.0.1) in IPv6 form"),
    ("http://[64:ff9b::a00:1]/", "a private address (10.0.0.1) in IPv6 form"),
    ("http://[::127.0.0.1]/", "a deprecated IPv4-compatible address"),
    ("http://10.1.2.3/", "10.1.2.3 is a private address"),
    ("http://167772161/", "10.0.0.1 is a private address"),
    ("http://172.16.0.1/", "a private address"),
    ("http://172.31.255.255/", "a private address"),
    ("http://192.168.1.1:8443/", "a private address"),
    ("http://[fc00::1]/", "a private (unique local) address"),
    ("http://[fd12:3456::1]/", "a private (unique local) address"),
    ("http://169.254.169.254/latest/meta-data/", "a cloud metadata address"),
    ("https://[fd00:ec2::254]/", "a cloud metadata address"),
    ("http://100.100.100.200/", "a cloud metadata address"),
    ("http://169.254.1.1/", "a link-local address"),
    ("http://[fe80::1]/", "a link-local address"),
    ("http://[fe80::1%25eth0]/", "a link-local address"),
    ("http://100.64.0.1/", "a carrier-grade NAT address"),
    ("http://100.127.255.254/", "a carrier-grade NAT address"),
    ("http://0.0.0.0/", "an unspecified ('this network') address"),
    ("http://0/", "an unspecified ('this network') address"),
    ("http://[::]/", "the unspecified address"),
    ("http://224.0.0.1/", "a multicast address"),
    ("http://239.255.255.250:1900/", "a multicast address"),
    ("http://[ff02::1]/", "a multicast address"),
    ("http://255.255.255.255/", "the broadcast address"),
    ("http://240.0.0.1/", "a reserved address"),
    ("http://192.0.2.1/", "a documentation address"),
    ("http://198.18.0.1/", "a reserved (benchmarking) address"),
    ("http://[2001:db8::1]/", "a documentation address"),
    ("http://[2001::1]/", "a Teredo tunnel address"),
    ("http://[fec0::1]/", "a site-local address"),
    ("http://[4000::1]/", "not a global unicast address"),
]


@pytest.mark.parametrize(("url", "reason"), BLOCKED_URLS)
async def test_addresses_that_are_not_public_are_refused(url: str, reason: str) -> None:
    network = Network(lambda request: page())
    resolver = FakeResolver({})
    with pytest.raises(FetchRefused) as refused:
        await fetcher(network, resolver).fetch(url)
    assert reason in str(refused.value)
    assert "only public addresses are fetched" in str(refused.value)
    assert network.requests == []
    assert resolver.calls == []  # literals are never looked up


BLOCKED_ANSWERS = [
    "127.0.0.1",
    "127.53.0.1",
    "::1",
    "10.0.0.7",
    "192.168.0.10",
    "172.20.1.1",
    "169.254.169.254",
    "fd00:ec2::254",
    "100.100.100.200",
    "100.64.1.1",
    "fe80::abcd%eth0",
    "0.0.0.0",
    "::",
    "::ffff:192.168.0.1",
    "64:ff9b::a9fe:a9fe",
    "2002:a00:1::1",
    "233.252.0.1",
]


@pytest.mark.parametrize("address", BLOCKED_ANSWERS)
async def test_names_that_resolve_to_addresses_that_are_not_public_are_refused(
    address: str,
) -> None:
    network = Network(lambda request: page())
    resolver = FakeResolver({"inside.test": [[address]]})
    with pytest.raises(FetchRefused, match=r"inside\.test resolves to .*; only public"):
        await fetcher(network, resolver).fetch("http://inside.test/")
    assert network.requests == []
    assert resolver.calls == ["inside.test"]


async def test_a_name_with_one_public_and_one_private_address_is_refused() -> None:
    network = Network(lambda request: page())
    resolver = FakeResolver({"mixed.test": [[PUBLIC, "10.0.0.1"]]})
    with pytest.raises(FetchRefused, match=re.escape("resolves to 10.0.0.1, a private address")):
        await fetcher(network, resolver).fetch("https://mixed.test/")
    assert network.requests == []


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC,
        "8.8.8.8",
        "1.1.1.1",
        PUBLIC_V6,
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "host", ["256.0.0.1", "1.2.3.4.5", "1.2.3.256", "1.16777216", "08.0.0.1", "a.b.9"]
)
def test_malformed_numeric_hosts_are_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not a valid IPv4 address"):
        ip_literal(host)


async def test_malformed_numeric_host_in_a_url_is_refused_without_lookup() -> None:
    network = Network(lambda request: page())
    resolver = FakeResolver({})
    with pytest.raises(FetchRefused, match="not a valid IPv4 address"):
        await fetcher(network, resolver).fetch("http://1.2.3.4.5/")
    assert resolver.calls == []


def test_names_are_not_literals() -> None:
    assert ip_literal("example.com") is None
    assert ip_literal("1.2.3.4.example") is None
    assert ip_literal("0x10.1") == ipaddress.IPv4Address("16.0.0.1")
    assert ip_literal("0177.0.0.01") == ipaddress.IPv4Address("127.0.0.1")
    assert ip_literal("[::ffff:7f00:1]") == ipaddress.IPv6Address("::ffff:127.0.0.1")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/file", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("gopher://example.com/", "only http and https"),
        ("http://user:secret@example.com/", "user name or password"),
        ("http://user@example.com/", "user name or password"),
        ("http:///path", "no host"),
        ("http://exa mple.com/", "not a valid"),
        ("http://[::1/", "not a valid URL"),
        ("http://0177.0.0.1/", "not a valid URL"),
    ],
)
async def test_other_schemes_credentials_and_bad_urls_are_refused(url: str, reason: str) -> None:
    network = Network(lambda request: page())
    resolver = FakeResolver({})
    with pytest.raises(FetchRefused, match=reason):
        await fetcher(network, resolver).fetch(url)
    assert network.requests == []
    assert resolver.calls == []


# ---- redirects and DNS rebinding -------------------------------------------------------------


async def test_a_redirect_to_a_private_address_is_refused_before_it_is_requested() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "http://internal.test/admin"})

    network = Network(handler)
    resolver = FakeResolver({"example.com": [[PUBLIC]], "internal.test": [["10.0.0.5"]]})
    with pytest.raises(
        FetchRefused, match=re.escape("internal.test resolves to 10.0.0.5, a private")
    ):
        await fetcher(network, resolver).fetch("http://example.com/")
    assert [str(r.url) for r in network.requests] == [f"http://{PUBLIC}/"]
    assert resolver.calls == ["example.com", "internal.test"]


async def test_a_redirect_to_a_metadata_literal_and_to_another_scheme_are_refused() -> None:
    for location, reason in [
        ("http://169.254.169.254/latest/", "a cloud metadata address"),
        ("http://[::ffff:a9fe:a9fe]/", "a cloud metadata address"),
        ("file:///etc/passwd", "only http and https"),
    ]:
        network = Network(lambda request, loc=location: redirect(loc))
        with pytest.raises(FetchRefused, match=reason):
            await fetcher(network).fetch("https://example.com/")
        assert len(network.requests) == 1


async def test_relative_redirects_are_followed_and_each_hop_resolved_and_pinned() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/start":
            return httpx.Response(
                302, headers={"location": "next?b=2", "set-cookie": "session=abc; Path=/"}
            )
        if request.url.path == "/next":
            return httpx.Response(307, headers={"location": "https://other.test/end"})
        return page("arrived", "text/plain")

    network = Network(handler)
    resolver = FakeResolver({"example.com": [[PUBLIC]], "other.test": [["8.8.4.4"]]})
    result = await fetcher(network, resolver).fetch("http://example.com/start")
    assert result.url == "https://other.test/end"
    assert result.text == "arrived"
    assert [str(r.url) for r in network.requests] == [
        f"http://{PUBLIC}/start",
        f"http://{PUBLIC}/next?b=2",
        "https://8.8.4.4/end",
    ]
    assert [r.headers["host"] for r in network.requests] == [
        "example.com",
        "example.com",
        "other.test",
    ]
    assert network.requests[2].extensions["sni_hostname"] == "other.test"
    assert all("cookie" not in r.headers for r in network.requests)  # none kept
    assert resolver.calls == ["example.com", "example.com", "other.test"]


async def test_at_most_five_redirects_are_followed() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        hop = int(request.url.path.strip("/"))
        if hop >= limit:
            return page("done", "text/plain")
        return httpx.Response(302, headers={"location": f"/{hop + 1}"})

    limit = 5
    network = Network(handler)
    assert (await fetcher(network).fetch("http://example.com/0")).text == "done"
    assert len(network.requests) == 6

    limit = 6
    network = Network(handler)
    with pytest.raises(FetchFailed, match="more than 5 redirects"):
        await fetcher(network).fetch("http://example.com/0")
    assert len(network.requests) == 6


async def test_dns_rebinding_cannot_move_the_connection_to_loopback() -> None:
    """The name resolves to a public address when checked, then to 127.0.0.1: the request still
    goes to the checked address, because the name is resolved once per hop and never again."""
    network = Network(lambda request: page("public content", "text/plain"))
    resolver = FakeResolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    result = await fetcher(network, resolver).fetch("http://rebind.test/")
    assert result.text == "public content"
    (request,) = network.requests
    assert request.url.host == PUBLIC
    assert request.headers["host"] == "rebind.test"
    assert resolver.calls == ["rebind.test"]


async def test_dns_rebinding_on_a_redirect_hop_is_caught_by_the_next_check() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(302, headers={"location": "/again"})

    network = Network(handler)
    resolver = FakeResolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    with pytest.raises(
        FetchRefused, match=re.escape("rebind.test resolves to 127.0.0.1, a loopback")
    ):
        await fetcher(network, resolver).fetch("http://rebind.test/")
    assert [r.url.host for r in network.requests] == [PUBLIC]
    assert resolver.calls == ["rebind.test", "rebind.test"]


# ---- limits ------------------------------------------------------------------------------------


async def test_reading_stops_at_the_byte_limit() -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield b"a" * 1000

    network = Network(
        lambda request: httpx.Response(200, headers={"content-type": "text/plain"}, content=body())
    )
    result = await fetcher(network, max_bytes=2500).fetch("http://example.com/")
    assert result.text == "a" * 2500
    assert result.truncated
    assert len(pulled) == 3


async def test_compressed_bodies_are_decoded_within_the_byte_limit() -> None:
    small = gzip.compress(b"<p>zipped</p>")
    bomb = gzip.compress(b"x" * 5_000_000)
    bodies = {"/small": small, "/bomb": bomb}
    network = Network(
        lambda request: httpx.Response(
            200,
            headers={"content-type": "text/html", "content-encoding": "gzip"},
            content=bodies[request.url.path],
        )
    )
    f = fetcher(network, max_bytes=10_000)
    small_page = await f.fetch("http://example.com/small")
    assert (small_page.text, small_page.truncated) == ("zipped", False)
    assert network.requests[0].headers["accept-encoding"] == "gzip, deflate"
    bomb_page = await f.fetch("http://example.com/bomb")
    assert len(bomb) < 10_000
    assert (len(bomb_page.text), bomb_page.truncated) == (10_000, True)


@pytest.mark.parametrize(
    "content_type", ["image/png", "application/octet-stream", "application/pdf", ""]
)
async def test_content_that_is_not_text_is_refused_unread(content_type: str) -> None:
    pulled: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        pulled.append(1)
        yield b"\x89PNG"

    headers = {"content-type": content_type} if content_type else {}
    network = Network(lambda request: httpx.Response(200, headers=headers, content=body()))
    with pytest.raises(FetchRefused, match="is not text"):
        await fetcher(network).fetch("http://example.com/picture")
    assert pulled == []


async def test_the_whole_fetch_is_bounded_in_time() -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return page()

    f = Fetcher(
        resolver=FakeResolver({"example.com": [[PUBLIC]]}),
        transport=httpx.MockTransport(slow),
        timeout_s=0.05,
    )
    started = time.monotonic()
    with pytest.raises(FetchFailed, match=r"no answer within 0\.05s"):
        await f.fetch("http://example.com/")
    assert time.monotonic() - started < 1


async def test_a_slow_resolver_counts_against_the_time_limit() -> None:
    async def slow_resolver(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(5)
        return [PUBLIC]

    network = Network(lambda request: page())
    f = Fetcher(resolver=slow_resolver, transport=network.transport, timeout_s=0.05)
    with pytest.raises(FetchFailed, match="no answer within"):
        await f.fetch("http://example.com/")
    assert network.requests == []


async def test_error_statuses_and_unresolvable_names_fail() -> None:
    network = Network(lambda request: httpx.Response(404, text="missing"))
    with pytest.raises(FetchFailed, match="HTTP 404 Not Found"):
        await fetcher(network).fetch("http://example.com/gone")

    async def nxdomain(host: str, port: int) -> Sequence[str]:
        raise OSError(-2, "Name or service not known")

    f = Fetcher(resolver=nxdomain, transport=network.transport)
    with pytest.raises(FetchFailed, match=re.escape("cannot resolve nowhere.test")):
        await f.fetch("http://nowhere.test/")


def test_html_to_text_drops_scripts_and_keeps_blocks_apart() -> None:
    html = (
        "<div>a<script>x()</script>b</div><style>.c{}</style><p>c&lt;d\n d</p>  <p>\n</p>e"
        "<pre>x = 1\ny = 2</pre>"
    )
    assert html_to_text(html) == "ab\nc<d d\ne\nx = 1\ny = 2"
    # declarations the standard parser chokes on are skipped, not fatal
    assert html_to_text("<p>a</p><![ x ]>b<!x y z>c") == "a\nbc"


# ---- a real socket -----------------------------------------------------------------------------


@contextlib.contextmanager
def serving(tls: ssl.SSLContext | None = None) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    """An HTTP(S) server on 127.0.0.1: its port, and the (Host header, path) of each request it
    answers. /big answers 200 kB of text, anything else a short secret."""
    seen: list[tuple[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.headers["host"], self.path))
            body = b"y" * 200_000 if self.path == "/big" else b"internal secret"
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # the client may stop reading early
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def local_server() -> Iterator[tuple[int, list[tuple[str, str]]]]:
    with serving() as served:
        yield served


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The address check lets 127.0.0.1 through, to test the real transport path locally."""
    real = fetch_module.refusal

    def refusal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        return None if str(address) == "127.0.0.1" else real(address)

    monkeypatch.setattr(fetch_module, "refusal", refusal)


async def test_a_real_local_server_is_never_reached(
    local_server: tuple[int, list[tuple[str, str]]],
) -> None:
    port, seen = local_server
    async with httpx.AsyncClient(trust_env=False) as check:  # the server does answer
        assert (await check.get(f"http://127.0.0.1:{port}/probe")).text == "internal secret"
    seen.clear()
    fetcher = Fetcher(timeout_s=5)
    for url in (
        f"http://127.0.0.1:{port}/",
        f"http://localhost:{port}/",
        f"http://2130706433:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
    ):
        with pytest.raises(FetchRefused, match="loopback"):
            await fetcher.fetch(url)
    assert seen == []


async def test_the_real_transport_connects_to_the_pinned_address_and_stops_at_the_limit(
    local_server: tuple[int, list[tuple[str, str]]], loopback_allowed: None
) -> None:
    port, seen = local_server
    resolver = FakeResolver({"site.test": [["127.0.0.1"]]})
    fetcher = Fetcher(resolver=resolver, timeout_s=5, max_bytes=4096)
    small = await fetcher.fetch(f"http://site.test:{port}/hello")
    big = await fetcher.fetch(f"http://site.test:{port}/big")
    assert (small.text, small.truncated) == ("internal secret", False)
    assert (big.text, big.truncated) == ("y" * 4096, True)
    assert seen == [(f"site.test:{port}", "/hello"), (f"site.test:{port}", "/big")]


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for the name site.test only (no IP address in it)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=site.test",
            "-addext",
            "subjectAltName=DNS:site.test",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_to_the_pinned_address_is_verified_for_the_name_in_the_url(
    certificate: tuple[Path, Path], loopback_allowed: None
) -> None:
    """The connection goes to 127.0.0.1, yet TLS sends and verifies the URL's name: a name the
    certificate is for works, another name on the same address fails verification (and no
    connection verified for the first name is reused for it)."""
    cert, key = certificate
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, context: names.append(name)
    client_tls = ssl.create_default_context(cafile=str(cert))
    resolver = FakeResolver({"site.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    fetcher = Fetcher(resolver=resolver, timeout_s=5, ssl_context=client_tls)
    with serving(server_tls) as (port, seen):
        page = await fetcher.fetch(f"https://site.test:{port}/hello")
        assert (page.url, page.text) == (f"https://site.test:{port}/hello", "internal secret")
        with pytest.raises(FetchFailed, match="certificate verify failed"):
            await fetcher.fetch(f"https://other.test:{port}/hello")
    assert seen == [(f"site.test:{port}", "/hello")]
    assert names[:2] == ["site.test", "other.test"]


# ---- the react tool ----------------------------------------------------------------------------


async def test_tool_observation_is_the_final_url_and_the_bounded_text() -> None:
    network = Network(lambda request: page("word " * 500, "text/plain"))
    tool = FetchUrlTool(fetcher(network), max_chars=50)
    assert tool.name == "fetch_url"
    assert "fetch_url[" in tool.description
    observation = await tool.run(" `example.com/page` ", [])
    assert observation == (
        "URL: https://example.com/page\n" + ("word " * 10)[:50] + "\n[cut: the page has more text]"
    )
    assert await FetchUrlTool(fetcher(network)).run("http://example.com/", []) == (
        "URL: http://example.com/\n" + " ".join(["word"] * 500)
    )


async def test_tool_reports_refusals_and_failures_as_error_text() -> None:
    network = Network(lambda request: httpx.Response(500))
    tool = FetchUrlTool(fetcher(network))
    assert await tool.run("", []) == "Error: no URL given"
    refused = await tool.run("http://169.254.169.254/", [])
    assert refused == (
        "Error: http://169.254.169.254/: 169.254.169.254 is a cloud metadata address; "
        "only public addresses are fetched"
    )
    failed = await tool.run("http://example.com/", [])
    assert (
        failed == "Error: http://example.com/: the server answered HTTP 500 Internal Server Error"
    )
    assert len(network.requests) == 1


def test_the_server_offers_fetch_url_only_when_turned_on() -> None:
    assert "fetch_url" not in server_tools(Settings())
    tool = server_tools(Settings(enable_url_fetch=True, fetch_timeout_s=3, fetch_max_bytes=4096))[
        "fetch_url"
    ]
    assert isinstance(tool, FetchUrlTool)
    assert (tool.fetcher.timeout_s, tool.fetcher.max_bytes) == (3, 4096)
