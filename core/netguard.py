"""Which addresses an outgoing webhook may reach: the SSRF guard's rules, as data.

A webhook URL is a template rendered from event data, so whoever posts an event picks the
target. Only globally routable unicast addresses are reachable, unless an operator allows a
network with ``HERALD_WEBHOOK_ALLOWED_NETWORKS``. The rules look at the address a host
*resolves to*, never at the spelling of the URL, so ``http://2130706433/``, ``[::ffff:7f00:1]``
and a DNS name pointing at 10.0.0.5 are all caught. The webhook channel resolves once and
connects to the address it checked (channels/webhook.py), so DNS rebinding cannot swap it.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Not flagged by ``ipaddress`` as private on every Python we support, but not public either.
_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
# NAT64 prefixes (RFC 6052, RFC 8215): the last 32 bits are the IPv4 address reached.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))

ENV_NAME = "HERALD_WEBHOOK_ALLOWED_NETWORKS"


class BlockedAddressError(Exception):
    """The host resolves to an address the rules refuse; retrying cannot help."""

    def __init__(self, host: str, address: str, rule: str) -> None:
        super().__init__(
            f"{host} resolves to {address}, a {rule} address; webhooks only reach public "
            f"addresses unless {ENV_NAME} allows it"
        )
        self.host = host
        self.address = address
        self.rule = rule


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """CIDRs (a bare address is a /32 or /128); a network with host bits set is an error."""
    networks: list[IPNetwork] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            raise ValueError(f"{text!r} is not a CIDR network: {exc}") from exc
    return tuple(networks)


def _embedded_v4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a 6to4 or NAT64 address leads to (IPv4-mapped is unwrapped earlier)."""
    if addr.sixtofour is not None:
        return addr.sixtofour
    if any(addr in net for net in _NAT64):
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def rule_for(address: str | IPAddress) -> str | None:
    """The rule that refuses ``address`` ("loopback", "private", ...), or None if public.

    IPv4-mapped IPv6 (``::ffff:127.0.0.1``) is judged as the IPv4 address it is; 6to4 and
    NAT64 addresses by the IPv4 address they lead to as well.
    """
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return rule_for(addr.ipv4_mapped)
        embedded = _embedded_v4(addr)
        if embedded is not None:
            return rule_for(embedded)
    if addr.is_unspecified:
        return "unspecified"
    if addr.is_loopback:
        return "loopback"
    if addr.is_link_local:  # 169.254.0.0/16 (cloud metadata), fe80::/10
        return "link-local"
    if addr.is_multicast:
        return "multicast"
    if addr.is_reserved:  # before private: ipaddress counts 240.0.0.0/4 as both
        return "reserved"
    if addr.is_private or addr in _SHARED:
        return "private"
    if isinstance(addr, ipaddress.IPv6Address) and addr.is_site_local:  # fec0::/10
        return "private"
    if not addr.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """The rules plus the operator's allowlist: what one process may connect to."""

    allowed: tuple[IPNetwork, ...] = ()

    def allows(self, address: str | IPAddress) -> bool:
        addr = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped  # "allow 127.0.0.0/8" covers ::ffff:127.0.0.1 too
        return any(addr.version == net.version and addr in net for net in self.allowed)

    def refusal(self, address: str | IPAddress) -> str | None:
        """The rule that refuses ``address`` here, or None when it may be reached."""
        if self.allows(address):
            return None
        return rule_for(address)

    def resolve(self, host: str, port: int) -> list[str]:
        """Every address of ``host``, each checked; raises if any one is refused.

        One refused address refuses the host: a name that answers with a public and a
        private address is either misconfigured or an attack, and which one a client
        picks is not ours to leave to chance. ``socket.gaierror`` passes through.
        """
        found = resolve_host(host, port)
        for sockaddr in found:
            rule = self.refusal(_strip_scope(sockaddr))
            if rule is not None:
                raise BlockedAddressError(host, _strip_scope(sockaddr), rule)
        return found


def resolve_host(host: str, port: int) -> list[str]:
    """The addresses to connect to, in the resolver's order; a literal is its own answer."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _strip_scope(address: str) -> str:
    """``fe80::1%eth0`` -> ``fe80::1``: the zone is for connecting, not for the rules."""
    return address.split("%", 1)[0]


_lookups = ThreadPoolExecutor(max_workers=4, thread_name_prefix="herald-netguard")


def static_url_refusal(
    url: str, policy: AddressPolicy, *, resolve_timeout: float = 2.0
) -> str | None:
    """Why a literal webhook URL can never be delivered to, or None.

    For early feedback where a URL is stored (a flow's step); the send checks again, so a
    name that does not resolve yet, or not quickly, is let through here.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None  # a bad port is the URL validator's business
    future = _lookups.submit(policy.resolve, host, port)
    try:
        future.result(timeout=resolve_timeout)
    except BlockedAddressError as exc:
        return str(exc)
    except (OSError, FutureTimeout, UnicodeError):
        return None
    return None
