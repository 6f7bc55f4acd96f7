"""
The relay's logic, transport-agnostic, with the clock and the reactor
injected.  One module per concept:

    - C{server}: the controller, the seam the transports hand messages to;
      it authenticates and dispatches;
    - C{allocate}: Allocate and Refresh; C{allocation}: an allocation and its
      permissions and channels; C{registry}: every allocation;
    - C{permissions}: CreatePermission and ChannelBind; C{policy}: which
      peers may be named;
    - C{tcprelay}: RFC 6062 TCP allocations;
    - C{datapath}: ChannelData and Send/Data indications, both ways;
    - C{relay}: the relay sockets and their port range;
    - C{limits}, C{descriptors}, C{sources}, C{refusals}, C{unverified}: the
      bounds on what clients and strangers can make the relay hold or send.
"""
