"""Which addresses a URL fetch may connect to: public unicast ones only.

`refusal` names what is wrong with an address: loopback, private, link-local, cloud metadata,
carrier-grade NAT, unspecified, multicast, broadcast, documentation, reserved, or not global,
and it judges the IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) by that address.
`ip_literal` reads a numeric host in every spelling resolvers accept, so `http://2130706433/`
or `http://0x7f.1/` cannot pass for a name.

`ip_literal` raises ValueError for a host that is numeric but no valid address.
"""

from __future__ import annotations

import ipaddress
import re

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_NUMBER = re.compile(r"0x[0-9a-f]*|[0-9]+")


def _networks(
    *pairs: tuple[str, str],
) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str]]:
    return [(ipaddress.ip_network(network), reason) for network, reason in pairs]


_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_BLOCKED = _networks(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address"),
    ("172.16.0.0/12", "a private address"),
    ("192.0.0.0/24", "a reserved (IETF protocol) address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved (6to4 relay) address"),
    ("192.168.0.0/16", "a private address"),
    ("198.18.0.0/15", "a reserved (benchmarking) address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("255.255.255.255/32", "the broadcast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("::/128", "the unspecified address"),
    ("::1/128", "a loopback address"),
    ("::/96", "a deprecated IPv4-compatible address"),
    ("64:ff9b:1::/48", "a local NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/32", "a Teredo tunnel address"),
    ("2001::/23", "a reserved (IETF protocol) address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "a reserved (segment routing) address"),
    ("fc00::/7", "a private (unique local) address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")


def refusal(address: Address) -> str | None:
    """Why `address` may not be fetched from (e.g. "a loopback address"), or None for a public
    address. IPv6 forms that carry an IPv4 address (mapped, 6to4, NAT64) are judged by it."""
    if address in _METADATA:
        return "a cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            reason = refusal(embedded)
            return None if reason is None else f"{reason} ({embedded}) in IPv6 form"
    for network, reason in _BLOCKED:
        if address.version == network.version and address in network:
            return reason
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return "not a global unicast address"
    if not address.is_global or address.is_multicast or address.is_reserved:
        return "not a public address"
    return None


def ip_literal(host: str) -> Address | None:
    """The address a numeric host stands for, in every spelling resolvers accept (dotted
    decimal, one to four parts, octal and hex parts, IPv6 in brackets); None for a name."""
    if host.startswith("[") or ":" in host:
        try:
            return ipaddress.IPv6Address(host.strip("[]").split("%")[0])  # no zone id
        except ValueError:
            raise ValueError(f"{host!r} is not a valid IPv6 address") from None
    labels = host.lower().removesuffix(".").split(".")
    if not _NUMBER.fullmatch(labels[-1]):
        return None  # a name: its last label is not a number
    parts = [_number(label, host) for label in labels]
    if len(parts) > 4 or any(p > 255 for p in parts[:-1]) or parts[-1] >= 256 ** (5 - len(parts)):
        raise ValueError(f"{host!r} is not a valid IPv4 address")
    value = parts[-1]
    for i, part in enumerate(parts[:-1]):
        value += part << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def _number(label: str, host: str) -> int:
    try:
        if label.startswith("0x"):
            return int(label[2:] or "0", 16)
        if len(label) > 1 and label.startswith("0"):
            return int(label, 8)
        return int(label, 10)
    except ValueError:
        raise ValueError(f"{host!r} is not a valid IPv4 address") from None
