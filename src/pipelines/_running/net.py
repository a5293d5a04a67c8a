"""Addresses of a cluster: which are loopback, and their host and port."""

from __future__ import annotations

import ipaddress
import re
import socket

from pipelines._running.options import OptionError

__all__ = ["is_loopback", "split_address"]

_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback interface, and nothing else.

    An IP address (IPv6 in brackets or bare) must be a loopback address; a
    host name must be a well-formed name every one of whose addresses is
    loopback (a name that does not resolve is not loopback).

    >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("localhost")
    (True, True, True)
    >>> is_loopback("0.0.0.0"), is_loopback("127.0.0.1.evil.example"), is_loopback("::1234")
    (False, False, False)
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    if len(text) > 253 or not _HOST_NAME.fullmatch(text):
        return False
    try:
        found = socket.getaddrinfo(text, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in found}
    return bool(addresses) and all(
        ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses
    )


def split_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); `OptionError` if it is not one.

    >>> split_address("127.0.0.1:2101"), split_address("[::1]:2101")
    (('127.0.0.1', 2101), ('[::1]', 2101))
    """
    host, sep, port = address.strip().rpartition(":")
    bare_v6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or bare_v6:
        msg = (
            f"cluster address {address!r} is not host:port. Hint: 127.0.0.1:2101, or "
            f"[::1]:2101 for IPv6."
        )
        raise OptionError(msg)
    return host, int(port)
