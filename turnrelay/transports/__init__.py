"""
Twisted protocols that frame TURN traffic: one datagram per message on UDP,
STUN and ChannelData back to back on TCP.  They decide nothing about TURN;
they hand every frame to the controller with the client's link.
"""
