"""
The kernel fast path for UDP ChannelData (C{offload}): an eBPF program on
the host's interfaces relays ChannelData between UDP clients and their
peers without the packets reaching this process, while turnrelay stays the
control plane: it tells the program's maps which channels may pass, and
reads back what they carried.
"""
