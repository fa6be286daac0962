"""Fetching a URL for a model, without letting the model reach what the server can reach.

A model (or a client through it) chooses the URL, so a fetch must never become a way into the
server's own network: its loopback services, the private network around it, the cloud metadata
endpoint that hands out credentials. `Fetcher` therefore:

- takes http and https only, without user names or passwords in the URL;
- resolves the host name itself and checks every address it gets (`refusal`): one address
  that is not public refuses the whole fetch. Numeric hosts are checked the same way, in the
  odd spellings resolvers accept too (`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`);
- connects to the exact address it checked: the request goes to the IP, with the original
  `Host` header, and for https the original name as TLS server name, so the certificate is
  verified for the real host. httpx never resolves the name again, so a DNS answer that changes
  between the check and the connection (DNS rebinding) cannot redirect the connection;
- follows redirects itself, checking each hop's URL and addresses again (at most five);
- bounds the whole fetch in time and the body in bytes (also after decompression), reads only
  text (HTML is turned into plain text), keeps no cookies and sends `User-Agent: Ponder`.

Problems come back as `FetchRefused` (the URL is not allowed) or `FetchFailed` (it is allowed,
but fetching it did not work); `FetchUrlTool` turns them into "Error: ..." observations.
"""

from __future__ import annotations

import asyncio
import codecs
import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from ponder.config import Settings
from ponder.sandbox.addresses import Address, ip_literal, refusal
from ponder.sandbox.html_text import html_to_text
from ponder.types import Message

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""(host, port) -> the host's addresses as text; `system_resolver` by default."""

USER_AGENT = "Ponder"
MAX_REDIRECTS = 5
MAX_OBSERVATION_CHARS = 4000
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "text/html, text/plain;q=0.9, application/json;q=0.9, application/xml;q=0.8, */*;q=0.1"
_TEXT_TYPES = frozenset({"application/json", "application/xml", "application/xhtml+xml"})
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


class FetchError(Exception):
    """A fetch that gave no page; the message says why, for the model to read."""


class FetchRefused(FetchError):
    """The URL, or an address it leads to, is not allowed."""


class FetchFailed(FetchError):
    """The URL is allowed, but fetching it did not work."""


@dataclass(frozen=True, slots=True)
class Page:
    url: str
    """The final URL, after redirects."""
    status: int
    content_type: str
    text: str
    truncated: bool = False
    """True when the body reached the byte limit and only its start was read."""


# ---- resolving -------------------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses from the system resolver (the event loop's `getaddrinfo`)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


# ---- the fetcher -------------------------------------------------------------------------------


class Fetcher:
    """Fetches public http(s) URLs as text (see the module's docstring).

    Without `transport`, each request goes out on a fresh httpx transport, so that no
    connection made (and TLS-verified) for one host name is ever reused for another name on the
    same address; `ssl_context` verifies its certificates (default: the system's CAs).
    `resolver` and `transport` are for tests: an injected transport is used as it is."""

    def __init__(
        self,
        *,
        timeout_s: float = 10.0,
        max_bytes: int = 1_000_000,
        max_redirects: int = MAX_REDIRECTS,
        resolver: Resolver | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_redirects = max_redirects
        self.resolver: Resolver = resolver or system_resolver
        self.transport = transport
        self.ssl_context = ssl_context

    @classmethod
    def for_settings(cls, settings: Settings) -> Fetcher:
        return cls(timeout_s=settings.fetch_timeout_s, max_bytes=settings.fetch_max_bytes)

    async def fetch(self, url: str) -> Page:
        """The page at `url`, after at most `max_redirects` redirects, within `timeout_s`."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._follow(url)
        except (TimeoutError, httpx.TimeoutException):
            raise FetchFailed(f"{url}: no answer within {self.timeout_s:g}s") from None

    async def _follow(self, url: str) -> Page:
        try:
            current = httpx.URL(url.strip())
        except httpx.InvalidURL as exc:
            raise FetchRefused(f"{url!r} is not a valid URL ({exc})") from None
        for _ in range(self.max_redirects + 1):
            page, location = await self._hop(current)
            if page is not None:
                return page
            try:
                current = current.join(location)
            except httpx.InvalidURL as exc:
                raise FetchRefused(f"{current} redirects to an invalid URL ({exc})") from None
        raise FetchFailed(f"{url}: more than {self.max_redirects} redirects")

    async def _pin(self, url: httpx.URL) -> tuple[Address, bool]:
        """The checked address to connect to for `url` (every address of its host checked), and
        whether the URL names it (an IP literal) rather than a host name."""
        if url.scheme not in ("http", "https"):
            raise FetchRefused(f"{url}: only http and https URLs are fetched")
        if url.userinfo:
            raise FetchRefused(
                f"{url.copy_with(username=None, password=None)}: a URL with a "
                "user name or password is not fetched"
            )
        host = url.raw_host.decode("ascii").lower()
        if not host:
            raise FetchRefused(f"{url}: no host")
        try:
            literal = ip_literal(host)
        except ValueError as exc:
            raise FetchRefused(f"{url}: {exc}") from None
        if literal is not None:
            addresses: list[Address] = [literal]
        else:
            if not _HOST_NAME.fullmatch(host):
                raise FetchRefused(f"{host!r} is not a valid host name")
            addresses = await self._resolve(host, url.port or _default_port(url))
        for address in addresses:
            reason = refusal(address)
            if reason is not None:
                shown = f"{host} resolves to {address}," if literal is None else f"{address} is"
                raise FetchRefused(f"{url}: {shown} {reason}; only public addresses are fetched")
        # IPv4 first: many hosts have no IPv6 route
        return next((a for a in addresses if a.version == 4), addresses[0]), literal is not None

    async def _resolve(self, host: str, port: int) -> list[Address]:
        try:
            found = await self.resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise FetchFailed(f"cannot resolve {host} ({exc})") from None
        addresses: list[Address] = []
        for text in found:
            try:
                addresses.append(ipaddress.ip_address(text.split("%")[0]))
            except ValueError:
                raise FetchRefused(f"{host} resolves to {text!r}, not an address") from None
        if not addresses:
            raise FetchFailed(f"cannot resolve {host} (no address)")
        return addresses

    async def _hop(self, url: httpx.URL) -> tuple[Page | None, str]:
        """One request to `url` at its pinned address: the page, or None and the redirect."""
        address, literal = await self._pin(url)
        pinned = url.copy_with(host=str(address))
        headers = {
            "Host": url.netloc.decode("ascii"),
            "User-Agent": USER_AGENT,
            "Accept": _ACCEPT,
            "Accept-Encoding": "gzip, deflate",
        }
        # TLS checks the certificate against the name in the URL, not the address connected to
        tls_name = url.scheme == "https" and not literal
        server_name = url.raw_host.decode("ascii").rstrip(".")
        extensions = {"sni_hostname": server_name} if tls_name else {}
        verify = self.ssl_context or True
        transport = self.transport or httpx.AsyncHTTPTransport(verify=verify, retries=0)
        # a fresh client per hop: no cookies carried, no proxy or settings from the environment
        client = httpx.AsyncClient(transport=transport, trust_env=False, timeout=self.timeout_s)
        try:
            async with client.stream(
                "GET", pinned, headers=headers, extensions=extensions
            ) as response:
                return await self._read(url, response)
        except httpx.TimeoutException:
            raise
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{url}: {type(exc).__name__}: {exc}") from None
        finally:
            if self.transport is None:  # an injected transport stays open for its owner
                await client.aclose()

    async def _read(self, url: httpx.URL, response: httpx.Response) -> tuple[Page | None, str]:
        status = response.status_code
        if status in REDIRECTS:
            location = response.headers.get("location")
            if not location:
                raise FetchFailed(f"{url}: HTTP {status} redirect without a Location")
            return None, location
        if status >= 300:
            raise FetchFailed(f"{url}: the server answered HTTP {status} {response.reason_phrase}")
        content_type = response.headers.get("content-type", "")
        mime = content_type.split(";")[0].strip().lower()
        if not _is_text(mime):
            shown = mime or "no content type"
            raise FetchRefused(f"{url}: {shown} is not text; only text, HTML, JSON and XML")
        raw, truncated = await self._body(response)
        text = _decode(raw, response.charset_encoding)
        if mime in _HTML_TYPES:
            text = html_to_text(text)
        return Page(str(url), status, mime, text.strip(), truncated), ""

    async def _body(self, response: httpx.Response) -> tuple[bytes, bool]:
        """At most `max_bytes` of the body, decompressed, and whether there may be more."""
        if response.is_stream_consumed:  # a response its transport read already (a test's)
            return response.content[: self.max_bytes], len(response.content) > self.max_bytes
        body = bytearray()
        truncated = False
        async for chunk in response.aiter_raw():
            body += chunk
            if len(body) >= self.max_bytes:  # at the limit: the page may have more
                truncated = True
                del body[self.max_bytes :]
                break
        encoding = response.headers.get("content-encoding", "")
        raw, more = _decompress(bytes(body), encoding, self.max_bytes)
        return raw, truncated or more


def _default_port(url: httpx.URL) -> int:
    return 443 if url.scheme == "https" else 80


def _is_text(mime: str) -> bool:
    return mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith(("+json", "+xml"))


def _decompress(body: bytes, encoding: str, limit: int) -> tuple[bytes, bool]:
    """`body` without its content encoding (gzip or deflate), at most `limit` bytes of it, and
    whether there was more: a small compressed body cannot expand past the limit."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return body, False
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        wbits = zlib.MAX_WBITS
    else:
        raise FetchFailed(f"unsupported content encoding {coding!r}")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit)
    except zlib.error as exc:
        raise FetchFailed(f"the compressed body is corrupt ({exc})") from None
    return data, bool(decompressor.unconsumed_tail)


def _decode(raw: bytes, charset: str | None) -> str:
    try:
        encoding = codecs.lookup(charset or "utf-8").name
    except LookupError:  # a charset Python does not know
        encoding = "utf-8"
    return raw.decode(encoding, errors="replace")


# ---- the react tool ----------------------------------------------------------------------------


class FetchUrlTool:
    """`fetch_url[url]`: the text of a public web page (at most `max_chars` of it)."""

    name = "fetch_url"

    def __init__(self, fetcher: Fetcher, max_chars: int = MAX_OBSERVATION_CHARS) -> None:
        self.fetcher = fetcher
        self.max_chars = max_chars

    @classmethod
    def for_settings(cls, settings: Settings) -> FetchUrlTool:
        return cls(Fetcher.for_settings(settings))

    @property
    def description(self) -> str:
        return (
            "fetches a public web page and gives its text, e.g. "
            f"fetch_url[https://example.com/page]. At most {self.max_chars} characters."
        )

    async def run(self, text: str, context: Sequence[Message]) -> str:
        url = text.strip().strip("`'\"<>").strip()
        if not url:
            return "Error: no URL given"
        if "://" not in url:
            url = f"https://{url}"
        try:
            page = await self.fetcher.fetch(url)
        except FetchError as exc:
            return f"Error: {exc}"
        body = page.text or "(the page has no text)"
        if len(body) > self.max_chars or page.truncated:
            body = body[: self.max_chars] + "\n[cut: the page has more text]"
        return f"URL: {page.url}\n{body}"
