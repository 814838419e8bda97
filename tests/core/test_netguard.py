"""The SSRF guard's rules, on addresses as data: nothing here opens a connection."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from core import netguard
from core.netguard import AddressPolicy, BlockedAddressError, parse_networks, rule_for


@pytest.mark.parametrize(
    ("address", "rule"),
    [
        ("127.0.0.1", "loopback"),
        ("127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT
        ("fc00::1", "private"),
        ("fd00:ec2::254", "private"),  # AWS's IPv6 metadata address
        ("fec0::1", "private"),  # deprecated site-local
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("169.254.0.1", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("::127.0.0.1", "reserved"),  # IPv4-compatible, long deprecated
        ("192.0.2.10", "private"),  # documentation
        # IPv4-mapped IPv6 is judged as the IPv4 address it is
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:7f00:1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::ffff:10.1.2.3", "private"),
        ("::ffff:0.0.0.0", "unspecified"),
        # 6to4 and NAT64 by the IPv4 address they lead to
        ("2002:a9fe:a9fe::1", "link-local"),
        ("2002:7f00:1::", "loopback"),
        ("64:ff9b::a9fe:a9fe", "link-local"),
        ("64:ff9b::10.0.0.1", "private"),
    ],
)
def test_non_public_addresses_are_refused_by_name(address: str, rule: str) -> None:
    assert rule_for(address) == rule
    assert AddressPolicy().refusal(address) == rule


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "::ffff:93.184.216.34", "64:ff9b::808:808"],
)
def test_public_addresses_pass(address: str) -> None:
    assert rule_for(address) is None
    assert AddressPolicy().refusal(address) is None


def test_the_allowlist_opens_exactly_its_networks() -> None:
    policy = AddressPolicy(parse_networks(["127.0.0.1/32", "10.8.0.0/16", "fd00::/8"]))
    assert policy.refusal("127.0.0.1") is None
    assert policy.refusal("::ffff:127.0.0.1") is None  # the mapped form of an allowed address
    assert policy.refusal("127.0.0.2") == "loopback"
    assert policy.refusal("::1") == "loopback"  # 127.0.0.1/32 says nothing about IPv6
    assert policy.refusal("10.8.3.4") is None
    assert policy.refusal("10.9.0.1") == "private"
    assert policy.refusal("fd12::1") is None
    assert policy.refusal("169.254.169.254") == "link-local"


def test_parse_networks_names_the_bad_entry() -> None:
    assert parse_networks(["127.0.0.1", " ::1/128 ", ""]) == parse_networks(
        ["127.0.0.1/32", "::1/128"]
    )
    with pytest.raises(ValueError, match="10.0.0.5/8"):
        parse_networks(["10.0.0.5/8"])
    with pytest.raises(ValueError, match="nope"):
        parse_networks(["nope"])


def test_literals_are_checked_without_a_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_lookups(*args: object, **kwargs: object) -> object:
        raise AssertionError(f"getaddrinfo{args} called for a literal")

    monkeypatch.setattr(socket, "getaddrinfo", no_lookups)
    policy = AddressPolicy()
    with pytest.raises(BlockedAddressError) as info:
        policy.resolve("169.254.169.254", 80)
    assert (info.value.address, info.value.rule) == ("169.254.169.254", "link-local")
    assert "link-local" in str(info.value)
    assert "HERALD_WEBHOOK_ALLOWED_NETWORKS" in str(info.value)
    assert policy.resolve("93.184.216.34", 443) == ["93.184.216.34"]


def test_one_refused_address_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name answering with a public and a private address is refused, not raced."""
    answers = [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", 443)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.7", 443)),
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(BlockedAddressError) as info:
        AddressPolicy().resolve("mixed.example", 443)
    assert (info.value.host, info.value.address, info.value.rule) == (
        "mixed.example",
        "10.0.0.7",
        "private",
    )


def test_a_name_is_judged_by_what_it_resolves_to(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::ffff:169.254.169.254", 80, 0, 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: answers)
    with pytest.raises(BlockedAddressError) as info:
        AddressPolicy().resolve("metadata.example", 80)
    assert info.value.rule == "link-local"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        # URLs name loopback hosts only; the rules themselves are tested on addresses above.
        ("https://[::1]:8443/hook", "loopback"),
        ("http://127.0.0.2/hook", "loopback"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("http://0.0.0.0:8080/", "unspecified"),
    ],
)
def test_static_url_refusal_on_literals(url: str, rule: str) -> None:
    reason = netguard.static_url_refusal(url, AddressPolicy())
    assert reason is not None and f"a {rule} address" in reason


def test_static_url_refusal_lets_unresolvable_names_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The send checks again; a name that does not resolve yet is no reason to refuse."""

    def fail(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    assert netguard.static_url_refusal("https://hooks.example/x", AddressPolicy()) is None
    allowed = AddressPolicy(allowed=(ipaddress.ip_network("127.0.0.0/8"),))
    assert netguard.static_url_refusal("https://127.0.0.9/x", allowed) is None


def test_the_allowlist_setting_reads_comma_separated_cidrs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.settings import Settings

    monkeypatch.setenv("HERALD_WEBHOOK_ALLOWED_NETWORKS", "127.0.0.0/8, ::1/128")
    monkeypatch.setenv("HERALD_WEBHOOK_SECRET_GRACE", "PT2H")
    settings = Settings()
    assert settings.webhook_policy.refusal("127.0.0.9") is None
    assert settings.webhook_policy.refusal("::1") is None
    assert settings.webhook_policy.refusal("10.0.0.1") == "private"
    assert settings.webhook_secret_grace.total_seconds() == 7200

    monkeypatch.setenv("HERALD_WEBHOOK_ALLOWED_NETWORKS", "")
    monkeypatch.delenv("HERALD_WEBHOOK_SECRET_GRACE")
    defaults = Settings()
    assert defaults.webhook_allowed_networks == ()  # nothing but public addresses
    assert defaults.webhook_secret_grace.total_seconds() == 24 * 3600
    monkeypatch.setenv("HERALD_WEBHOOK_ALLOWED_NETWORKS", "10.0.0.5/8")
    with pytest.raises(ValueError, match="host bits set"):
        Settings()
