"""Client IP from trusted and untrusted peers, with forwarded headers spoofed every way."""

from __future__ import annotations

import ipaddress

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.http.clientip import client_ip

TRUSTED = [ipaddress.ip_network("172.18.0.0/16"), ipaddress.ip_network("fd00::/8")]
PROXY = "172.18.0.2"


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


@pytest.mark.parametrize(
    ("peer", "sent", "expected"),
    [
        # An untrusted peer: every forwarded header is ignored.
        ("203.0.113.7", [], "203.0.113.7"),
        ("203.0.113.7", [("X-Real-IP", "1.1.1.1")], "203.0.113.7"),
        ("203.0.113.7", [("X-Forwarded-For", "1.1.1.1")], "203.0.113.7"),
        ("203.0.113.7", [("x_forwarded-for", "1.1.1.1")], "203.0.113.7"),
        # The trusted proxy: X-Real-IP (which nginx-proxy overwrites) wins.
        (PROXY, [("X-Real-IP", "198.51.100.9")], "198.51.100.9"),
        (PROXY, [("X-Real-IP", "198.51.100.9"), ("X-Forwarded-For", "6.6.6.6, 198.51.100.9")], "198.51.100.9"),
        # Without X-Real-IP: the right-most X-Forwarded-For entry that is not a trusted proxy.
        (PROXY, [("X-Forwarded-For", "6.6.6.6, 198.51.100.9")], "198.51.100.9"),
        (PROXY, [("X-Forwarded-For", "6.6.6.6, 198.51.100.9, 172.18.0.5")], "198.51.100.9"),
        (PROXY, [("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "198.51.100.9")], "198.51.100.9"),
        (PROXY, [("X-Forwarded-For", "6.6.6.6, not-an-ip")], PROXY),
        (PROXY, [("X-Forwarded-For", "172.18.0.9")], PROXY),
        (PROXY, [("X-Real-IP", "garbage")], PROXY),
        (PROXY, [], PROXY),
        # IPv6 peers and mapped addresses.
        ("fd00::1", [("X-Real-IP", "2001:db8::7")], "2001:db8::7"),
        ("::ffff:203.0.113.7", [("X-Real-IP", "1.1.1.1")], "203.0.113.7"),
        ("::ffff:172.18.0.2", [("X-Real-IP", "198.51.100.9")], "198.51.100.9"),
    ],
    ids=[
        "untrusted-plain",
        "untrusted-real-ip",
        "untrusted-xff",
        "untrusted-odd-spelling",
        "proxy-real-ip",
        "proxy-real-ip-beats-xff",
        "proxy-xff-right-most",
        "proxy-xff-skips-proxies",
        "proxy-xff-several-headers",
        "proxy-xff-garbage-stops",
        "proxy-xff-only-proxies",
        "proxy-bad-real-ip",
        "proxy-no-headers",
        "ipv6-proxy",
        "mapped-untrusted",
        "mapped-proxy",
    ],
)
def test_client_ip(peer: str, sent: list[tuple[str, str]], expected: str) -> None:
    assert client_ip(peer, headers(*sent), TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    assert client_ip("10.0.0.1", headers(("X-Real-IP", "1.1.1.1")), []) == "10.0.0.1"
