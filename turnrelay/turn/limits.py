# -*- test-case-name: tests.test_turn_allocate -*-
"""
The relay's lifetimes and quotas, as one value the controller consults and
an operator's reload replaces whole.
"""

from __future__ import annotations

from typing import Optional

import attr

from turnrelay.stun.channeldata import CHANNEL_NUMBER_MAX_RFC5766

# Seconds to wait for an outgoing RFC 6062 peer connection (section 5.2:
# at least 30; coturn uses 30 s).
CONNECT_TIMEOUT = 30.0


@attr.frozen
class RelayLimits:
    """
    Lifetimes and quotas.  A quota of 0 means unlimited.

    @ivar defaultLifetime: allocation lifetime when none (or less) is asked.
    @ivar maxLifetime: the longest lifetime granted (RFC 8656 recommends at
        most 3600 s).
    @ivar userQuota: allocations per username (486 beyond).
    @ivar totalQuota: allocations in all (486 beyond).
    @ivar maxPermissions: permissions per allocation (508 beyond).
    @ivar maxChannels: channel bindings per allocation (508 beyond).
    @ivar bandwidth: bytes per second per allocation and direction; excess
        is dropped.  0 for no cap.
    @ivar tcpConnectTimeout: seconds a Connect may take before 447 (RFC
        6062 section 5.2: at least 30).
    @ivar maxChannelNumber: the highest channel number bound: RFC 5766's
        0x7FFF by default, for the clients that still use it, or RFC 8656's
        0x4FFF.
    @ivar maxPeerConnections: RFC 6062 peer connections, pending and
        established, per allocation (Connect gets 508 beyond; peers'
        connections are refused).
    """

    defaultLifetime: int = 600
    maxLifetime: int = 3600
    userQuota: int = 10
    totalQuota: int = 10000
    maxPermissions: int = 64
    maxChannels: int = 64
    bandwidth: int = 0
    maxChannelNumber: int = CHANNEL_NUMBER_MAX_RFC5766
    tcpConnectTimeout: float = CONNECT_TIMEOUT
    maxPeerConnections: int = 100

    def lifetime(self, requested: Optional[int]) -> int:
        """
        The lifetime to grant: the request capped at the maximum, but never
        below the default (RFC 8656 sections 7.2 and 8.2).
        """
        default = min(self.defaultLifetime, self.maxLifetime)
        if requested is None:
            return default
        return max(default, min(requested, self.maxLifetime))
