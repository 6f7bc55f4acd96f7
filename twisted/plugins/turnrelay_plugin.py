"""
Makes C{twistd turnrelay} available.  There is no C{__init__.py} under
C{twisted/}: this directory extends Twisted's own plugin package.
"""

from twisted.application.service import ServiceMaker

turnrelay = ServiceMaker(
    "turnrelay",
    "turnrelay.tap",
    "A TURN relay and STUN server (RFC 8656, RFC 8489)",
    "turnrelay",
)
