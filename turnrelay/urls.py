# -*- test-case-name: tests.test_admin_credentials -*-
"""
The C{turn:} and C{turns:} URLs (RFC 7065) that name a relay to clients: the
credentials endpoint and the demo page hand them out, and a fleet node
publishes them.
"""

from __future__ import annotations

from ipaddress import ip_address
from typing import List, Tuple

from turnrelay.config import RelayConfig
from turnrelay.stun.address import TransportAddress

# The URL scheme and ?transport= of each listener transport (RFC 7065).
_SCHEMES = {
    "udp": ("turn", "udp"),
    "tcp": ("turn", "tcp"),
    "tls": ("turns", "tcp"),
}


def urlHost(host: str) -> str:
    """
    A host as it is written in a URL: IPv6 addresses in brackets.
    """
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def iceServerURLs(config: RelayConfig, listeners: List[Tuple[str, TransportAddress]]) -> List[str]:
    """
    The C{turn:} and C{turns:} URLs (RFC 7065) of a relay's listeners.

    The host is C{server-name}, else C{external-ip}, else the listener's
    address when it is specific, else the relay IP.

    @param listeners: C{(transport, address)} of each listener, as
        L{RelayService.listeningAddresses
        <turnrelay.service.RelayService.listeningAddresses>} gives them.
    @return: one URL per listener, duplicates left out, in listener order;
        none for a listener with no address to advertise.
    """
    urls: List[str] = []
    for transport, address in listeners:
        host = config.serverName or config.externalIP
        if host is None:
            host = (
                address.host
                if not ip_address(address.host).is_unspecified
                else config.effectiveRelayIP()
            )
        if host is None:
            continue
        scheme, parameter = _SCHEMES[transport]
        url = f"{scheme}:{urlHost(host)}:{address.port}?transport={parameter}"
        if url not in urls:
            urls.append(url)
    return urls
