"""
The relay's logic: request handling, and later allocations, permissions,
channels, peer policy and quotas.  Transport-agnostic, with the clock and the
reactor injected.
"""
