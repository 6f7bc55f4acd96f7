"""
turnrelay: a TURN server (RFC 8656, RFC 8489, RFC 6062) on Twisted.

The package is layered, and imports go one way only::

    stun  <-  turn  <-  transports  <-  service  <-  tap

L{turnrelay.stun} is a pure codec, L{turnrelay.turn} holds the relay's logic
with time and reactor injected, L{turnrelay.transports} frames bytes for UDP
and TCP, L{turnrelay.service} builds a service tree for embedders and
L{turnrelay.tap} is the twistd plugin's option parsing.
"""

__version__ = "0.1.0"
