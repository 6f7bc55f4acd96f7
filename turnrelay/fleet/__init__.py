"""
A node of a fleet (C{redis}): state shared with the other nodes on a Redis
server, through C{txredisapi}.

What is shared is what must hold across nodes: quotas (L{quota}), revoked
credentials (L{revocation}), users kept in Redis (L{users}), each node's
address, load and state (L{registry}) and usage per user (L{accounting}).
Everything on the data path stays per node: a node relays without Redis,
and asks it only when an allocation is made.

L{node.FleetNode} ties them to one relay; L{link.RedisLink} is the
connection they share.
"""
