# -*- test-case-name: tests.test_admin_manhole -*-
"""
What the SSH admin console (L{turnrelay.admin.manhole}) offers: the live
objects of a running relay, and small helpers that answer in readable text.
One concept (the console's vocabulary), hence one module, if a long one.

The helpers are plain methods of L{AdminConsole}: they read and act through
the relay's public API (L{turnrelay.service.RelayService}) and return text,
so they are tested without SSH and can be called from any code holding the
relay.

Every helper returns a L{ConsoleText}: a C{str} whose C{repr} is the text
itself.  The console shows the value of an expression with C{repr}, so
C{allocations()} prints a table, not a quoted string full of C{\\n}; code
and tests use the value as the ordinary string it is (C{print()} works as
well).
"""

from __future__ import annotations

import inspect
import pydoc
import re
import time
from collections.abc import Iterable
from ipaddress import ip_address
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from turnrelay.logs import LEVELS, Logger, levelName
from turnrelay.stun.address import TransportAddress
from turnrelay.stun.attributes import TRANSPORT_TCP
from turnrelay.transports.tls import fingerprint
from turnrelay.turn.allocation import RELAYED_COUNTERS, Allocation
from turnrelay.turn.registry import AllocationRegistry
from turnrelay.turn.server import CHALLENGES

KILL_REASON = "killed by the administrator"

# The helpers, in the order help() lists them.
HELPERS = (
    "allocations",
    "kill",
    "revoke",
    "unrevoke",
    "stats",
    "drain",
    "reloadTLS",
    "mint",
    "loglevel",
    "help",
)

# The live objects, with what help() says of them.
OBJECTS = (
    ("relay", "the relay service (RelayService): root of turnrelay's service tree"),
    ("server", "the TURN controller (TURNServer) every transport hands requests to"),
    ("registry", "the live allocations (AllocationRegistry): iterate, len(), forUser(name)"),
    ("config", "the configuration in force when the session started (RelayConfig)"),
    ("console", "this console (AdminConsole), whose methods the helpers are"),
)

_EPYTEXT_MARKUP = re.compile(r"[BCILMU]\{([^{}]*)\}")


class ConsoleText(str):
    """
    Text the console shows as it is.

    The console displays an expression's value with C{repr}; this C{str}
    answers C{repr} with the text itself.  Anything built from it with
    string operations is a plain C{str} again.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


class ConsoleFailure(ConsoleText):
    """
    Text saying that a helper did not do what was asked (nothing to kill, a
    level that does not exist, certificate files that do not load).  The
    console shows it as any other answer; the control command
    (L{turnrelay.admin.control}) exits non-zero on it.
    """

    __slots__ = ()


class AdminConsole:
    """
    The admin console's namespace and helpers, for one relay.

    @ivar relay: the L{turnrelay.service.RelayService} administered.
    """

    log = Logger()

    def __init__(self, relay: Any, clock: IReactorTime) -> None:
        """
        @param relay: the running relay.
        @param clock: the relay's clock, for ages and expiry times.
        """
        self.relay = relay
        self.logLevels = relay.logLevels
        self._clock = clock

    @property
    def registry(self) -> AllocationRegistry:
        """
        The relay's live allocations.
        """
        registry: AllocationRegistry = self.relay.server.registry
        return registry

    def namespace(self) -> Dict[str, Any]:
        """
        The names a console session starts with: the live objects and the
        helpers.  Built for each session, so that C{config} is the
        configuration in force then (C{reloadConfig} replaces it).
        """
        relay = self.relay
        names: Dict[str, Any] = {
            "relay": relay,
            "server": relay.server,
            "registry": relay.server.registry,
            "config": relay.config,
            "console": self,
        }
        for name in HELPERS:
            names[name] = getattr(self, name)
        return names

    # Allocations -------------------------------------------------------------

    def allocations(self, user: Optional[str] = None, address: Any = None) -> ConsoleText:
        """
        A table of the live allocations, optionally filtered.

        One row per allocation, oldest first: user, client and server
        address, transport, relayed addresses, age, lifetime left,
        permissions, channels, packets and bytes relayed to and from peers,
        packets dropped.

        @param user: only this username's allocations.
        @param address: only the allocations whose client, relayed or peer
            address is this one: C{"ip"} or C{"ip:port"} (C{"[ip6]:port"}).
        """
        chosen = self.selectAllocations(user, address)
        records = [self.allocationRecord(allocation) for allocation in chosen]
        return allocationsText(records, len(self.registry), user, address)

    def selectAllocations(
        self, user: Optional[str] = None, address: Any = None
    ) -> List[Allocation]:
        """
        The live allocations L{allocations} shows, oldest first.

        @param user: only this username's allocations.
        @param address: only the allocations whose client, relayed or peer
            address is this one: C{"ip"} or C{"ip:port"} (C{"[ip6]:port"}).
        """
        registry = self.registry
        chosen = list(registry) if user is None else registry.forUser(user)
        if address is not None:
            wanted = _canonicalAddress(str(address))
            chosen = [a for a in chosen if wanted in _addressesOf(a)]
        chosen.sort(key=lambda allocation: allocation.createdAt)
        return chosen

    def allocationRecord(self, allocation: Allocation) -> Dict[str, Any]:
        """
        What L{allocations} shows of one allocation, as plain data (for the
        control command's JSON): addresses as C{"ip:port"} text, times in
        seconds.
        """
        fiveTuple = allocation.fiveTuple
        return {
            "user": allocation.username,
            "client": str(fiveTuple.clientAddress),
            "server": str(fiveTuple.serverAddress),
            "transport": fiveTuple.transportProtocol,
            "tcpRelay": allocation.transport == TRANSPORT_TCP,
            "relayed": [str(address) for address in allocation.relayedAddresses],
            "age": round(self._clock.seconds() - allocation.createdAt, 3),
            "lifetime": allocation.lifetime,
            "permissions": len(allocation.permissions),
            "channels": len(allocation.channels),
            **{counter: getattr(allocation, counter) for counter in RELAYED_COUNTERS},
            "dropped": allocation.dropped,
        }

    def kill(self, target: Any) -> ConsoleText:
        """
        End an allocation, or all of a user's, now.

        The log gives the reason "killed by the administrator"; the client
        learns of it at its next request (437).

        @param target: an L{Allocation} (or several), a relayed address
            such as C{"198.51.100.1:49152"}, a client address as
            L{allocations} takes it (C{"ip:port"}, C{"[ip6]:port"}, or
            C{"ip"} for all of that host's), or a username (all of its
            allocations); tried in that order.
        """
        registry = self.registry
        if isinstance(target, Allocation):
            victims = [target]
        elif isinstance(target, str):
            wanted = _canonicalAddress(target)
            victims = [
                allocation
                for allocation in registry
                if any(str(address) == wanted for address in allocation.relayedAddresses)
            ]
            if not victims:
                victims = [
                    allocation
                    for allocation in registry
                    if wanted
                    in (
                        str(allocation.fiveTuple.clientAddress),
                        allocation.fiveTuple.clientAddress.host,
                    )
                ]
            if not victims:
                victims = registry.forUser(target)
            if not victims:
                return ConsoleFailure(
                    "nothing killed: no allocation has the relayed address, client address "
                    f"or username {target!r}"
                )
        elif isinstance(target, Iterable) and all(isinstance(a, Allocation) for a in target):
            victims = list(target)
        else:
            return ConsoleFailure(
                "kill() takes an allocation, a relayed or client address such as "
                f"'198.51.100.1:49152' or a username; not {type(target).__name__}"
            )
        lines = []
        for allocation in victims:
            relayed = ", ".join(str(address) for address in allocation.relayedAddresses)
            if registry.get(allocation.fiveTuple) is not allocation:
                lines.append(f"  {relayed} ({allocation.username}) had already ended")
                continue
            registry.remove(allocation, KILL_REASON)
            lines.append(f"  {relayed} ({allocation.username}, {allocation.fiveTuple})")
        killed = sum(1 for line in lines if not line.endswith("had already ended"))
        head = f"killed {killed} allocation{'s' if killed != 1 else ''}:"
        return ConsoleText("\n".join([head, *lines]))

    # Revocation (a fleet's) --------------------------------------------------

    def revoke(self, username: str) -> Union[ConsoleText, Deferred[ConsoleText]]:
        """
        Revoke a user on every node of the fleet: refused at once, and its
        allocations ended everywhere within a second.

        Revoking a name also refuses the TURN REST API usernames whose user
        id it is (revoke("alice") refuses 1700000000:alice).  Needs the
        redis setting; the answer comes once Redis has it.

        @param username: a static, Redis or REST user, or a REST user id.
        """
        return self._revocation(username, revoke=True)

    def unrevoke(self, username: str) -> Union[ConsoleText, Deferred[ConsoleText]]:
        """
        Take a revocation back: the user is let in again (on the other
        nodes within a second).

        @param username: as given to revoke().
        """
        return self._revocation(username, revoke=False)

    def revocationRecord(self, username: str, revoke: bool) -> Deferred[Dict[str, Any]]:
        """
        Revoke or unrevoke as L{revoke} and L{unrevoke} do, as plain data
        (for the control command's JSON).

        @return: a L{Deferred} firing with C{username}, C{revoked} (the
            state now), C{ended} (allocations ended on this node) and
            C{changed} (whether it was in the other state before); failing
            with L{ValueError} (no fleet, a bad name) or
            L{RedisUnavailable<turnrelay.fleet.link.RedisUnavailable>}.
        """
        fleet = getattr(self.relay, "fleet", None)
        if fleet is None:
            return fail(
                ValueError(
                    "revocation is shared through Redis: set redis to revoke; on a single "
                    "relay, remove the user from the configuration, reload and kill() it"
                )
            )
        revocations = fleet.revocations
        try:
            was = username in revocations.revoked
            if revoke:
                self.log.info("admin console revokes {username}", username=username)
                acting: Deferred[Any] = revocations.revoke(username)
            else:
                self.log.info("admin console unrevokes {username}", username=username)
                acting = revocations.unrevoke(username)
        except ValueError as e:
            return fail(e)

        def record(result: Any) -> Dict[str, Any]:
            if revoke:
                return {"username": username, "revoked": True, "ended": result, "changed": not was}
            return {"username": username, "revoked": False, "ended": 0, "changed": bool(result)}

        return acting.addCallback(record)

    def _revocation(self, username: str, revoke: bool) -> Union[ConsoleText, Deferred[ConsoleText]]:
        if getattr(self.relay, "fleet", None) is None:
            # Said at once, without a Deferred for the console to show.
            return ConsoleFailure(
                "revocation is shared through Redis: set redis to revoke; on a single "
                "relay, remove the user from the configuration, reload and kill() it"
            )

        def text(record: Dict[str, Any]) -> ConsoleText:
            return revocationText(record)

        def failed(failure: Failure) -> ConsoleText:
            verb = "revoked" if revoke else "unrevoked"
            return ConsoleFailure(f"{username!r} not {verb}: {failure.getErrorMessage()}")

        return self.revocationRecord(username, revoke).addCallbacks(text, failed)

    # The relay ---------------------------------------------------------------

    def stats(self) -> ConsoleText:
        """
        The relay's live figures.

        Uptime, allocations, permissions, channels, what was relayed,
        requests answered, refused authentications.
        """
        return statsText(self.relay.stats())

    def drain(self, timeout: Optional[float] = None) -> ConsoleText:
        """
        Take no new allocations, and let the live ones run out.

        New clients get 300 Try Alternate to alternate-server, or 403.

        @param timeout: seconds after which the allocations left are ended;
            drain-timeout by default, 0 to wait for ever.
        """
        relay = self.relay
        relay.drain(timeout)
        left = len(self.registry)
        timeout = relay.config.drainTimeout if timeout is None else timeout
        alternates = relay.config.alternateServers
        refusal = (
            "sent to " + ", ".join(str(address) for address in alternates)
            if alternates
            else "refused (403)"
        )
        lines = [f"draining: new allocations are {refusal}"]
        if not left:
            lines.append("no allocations are left: the drain is complete")
        else:
            lines.append(
                f"{left} allocation{'s are' if left != 1 else ' is'} left, running to "
                "the end of their lifetime"
                + (f"; any left in {_duration(timeout)} will be ended" if timeout else "")
            )
            lines.append("stats() and allocations() show what remains")
        return ConsoleText("\n".join(lines))

    def reloadTLS(self) -> ConsoleText:
        """
        Read the TLS certificate files again, now.

        New handshakes get the new certificate; established connections
        keep theirs.
        """
        relay = self.relay
        if relay.tlsOptions is None:
            return ConsoleFailure("no tls listener: there is no certificate to reload")
        reloads = relay.tlsOptions.reloads
        if not relay.reloadTLS():
            return ConsoleFailure(
                "TLS certificate not reloaded: the files did not load (the log says why); "
                "the old certificate stays in service"
            )
        certificate = relay.tlsOptions.certificate
        done = "reloaded" if relay.tlsOptions.reloads != reloads else "files unchanged, still"
        return ConsoleText(
            f"TLS certificate {done}: {certificate.subject.rfc4514_string()}, "
            f"SHA-256 {fingerprint(certificate)}"
        )

    def mint(self, userID: str, ttl: float = 86400) -> ConsoleText:
        """
        Mint a TURN REST API credential (shown here, never logged).

        It is made as the web application would, with the first
        static-auth-secret.

        @param userID: who it is for; it ends the username.
        @param ttl: seconds it stays valid, at most rest-max-ttl.
        """
        try:
            record = self.mintRecord(userID, ttl)
        except ValueError as e:
            return ConsoleFailure(f"cannot mint a credential: {e}")
        return credentialText(record)

    def mintRecord(self, userID: str, ttl: float = 86400) -> Dict[str, Any]:
        """
        Mint a credential as L{mint} does, as plain data (for the control
        command's JSON); logged without the password.

        @return: C{username}, C{password}, C{realm}, C{expires} (Unix time)
            and C{valid} (seconds).
        @raise ValueError: no static-auth-secret is configured.
        """
        username, password = self.relay.mintCredential(userID, ttl)
        expiry = int(username.partition(":")[0])
        valid = max(0, expiry - int(self._clock.seconds()))
        self.log.info(
            "admin console minted a TURN REST credential for {userID}, valid {valid} s",
            userID=userID,
            valid=valid,
        )
        return {
            "username": username,
            "password": password,
            "realm": self.relay.config.realm,
            "expires": expiry,
            "valid": valid,
        }

    def loglevel(self, level: Any = None) -> ConsoleText:
        """
        Show this relay's log level, or set it.

        The levels: debug, info, warn (or warning), error, critical.  The
        level stays in force across a reload (SIGHUP) unless the reloaded
        configuration changes log-level.

        @param level: the new level; L{None} to show the current one.
        """
        current = self.logLevels.level()
        if level is None:
            return ConsoleText(f"log level: {current} (one of {', '.join(LEVELS)})")
        try:
            name = levelName(str(getattr(level, "name", level)))
        except ValueError:
            return ConsoleFailure(
                f"log level unchanged ({current}): {level!r} is not one of {', '.join(LEVELS)}"
            )
        # Said before the change, so that it shows whichever way it goes.
        self.log.info(
            "log level set to {newLevel} from the admin console (was {was})",
            newLevel=name,
            was=current,
        )
        self.logLevels.setLevel(name)
        return ConsoleText(f"log level: {name} (was {current})")

    def help(self, topic: Any = None) -> ConsoleText:
        """
        List what is here, or document one thing: help(kill).

        help(registry) documents an object, as pydoc would.

        @param topic: what to document; L{None} for the list.
        """
        if topic is None:
            return self._overview()
        for name in HELPERS:
            if topic == getattr(self, name):
                method = getattr(self, name)
                doc = _EPYTEXT_MARKUP.sub(r"\1", inspect.getdoc(method) or "")
                return ConsoleText(f"{name}{_signature(method)}\n\n{doc}")
        # pydoc's plain text, never its pager (which would read the terminal).
        renderer = pydoc.plaintext  # type: ignore[attr-defined]
        return ConsoleText(pydoc.render_doc(topic, renderer=renderer))

    def _overview(self) -> ConsoleText:
        lines = ["turnrelay admin console: Python, inside the running relay.", ""]
        width = max(len(name) for name, _ in OBJECTS)
        lines += [f"  {name:<{width}}  {what}" for name, what in OBJECTS]
        lines += ["", "Helpers (each answers in text):"]
        calls = [(name + _signature(getattr(self, name)), name) for name in HELPERS]
        width = max(len(call) for call, _ in calls)
        for call, name in calls:
            lines.append(f"  {call:<{width}}  {_summary(getattr(self, name))}")
        lines += [
            "",
            "help(kill) shows one helper in full.  exit() or Ctrl-D ends the session;",
            "a script piped into `ssh -tt` ends with its input.",
        ]
        return ConsoleText("\n".join(lines))


# Formatting ----------------------------------------------------------------


def statsText(stats: Dict[Any, Any]) -> ConsoleText:
    """
    How L{AdminConsole.stats} shows a relay's figures (L{RelayService.stats
    <turnrelay.service.RelayService.stats>}, or their sum over the workers
    of a control process, whose pairs are C{"udp/ipv4"} text).
    """
    figures = dict(stats)
    lines: List[Tuple[str, str]] = []

    def take(key: str, label: str, render: Callable[[Any], str] = str) -> None:
        if key in figures:
            lines.append((label, render(figures.pop(key))))

    take("uptime", "uptime", lambda seconds: _duration(seconds))
    take("draining", "draining", lambda draining: "yes" if draining else "no")
    take("allocations", "allocations")
    take(
        "allocationsByTransportAndFamily",
        "  by transport",
        lambda counts: _counts({_pair(key, "/"): n for key, n in counts.items()}),
    )
    take("permissions", "permissions")
    take("channels", "channels")
    take("tcpPeerConnections", "TCP peer connections")
    relayed = figures.pop("relayed", {})
    take(
        "requests",
        "requests answered",
        lambda counts: _counts({_pair(key, " "): n for key, n in counts.items()}),
    )
    failures = figures.pop("authFailures", {})
    lines.append(
        (
            "refused authentications",
            _counts({k: n for k, n in failures.items() if k not in CHALLENGES}),
        )
    )
    lines.append(
        (
            "challenges (first 401, 438)",
            _counts({k: n for k, n in failures.items() if k in CHALLENGES}),
        )
    )
    take("refusals", "refused unauthenticated", _counts)
    take("tlsReloads", "TLS certificate reloads")
    for key, value in sorted(figures.items()):
        lines.append((key, str(value)))
    width = max(len(label) for label, _ in lines) if lines else 0
    text = [f"{label:<{width}}  {value}" for label, value in lines]
    text.append("relayed (live and ended allocations), by client transport:")
    if not relayed:
        text.append("  nothing yet")
    for transport, counts in sorted(relayed.items()):
        dropped = sum(n for field, n in counts.items() if field.startswith("dropped"))
        toPeers = _traffic(counts.get("packetsToPeer", 0), counts.get("bytesToPeer", 0))
        fromPeers = _traffic(counts.get("packetsFromPeer", 0), counts.get("bytesFromPeer", 0))
        text.append(f"  {transport}: to peers {toPeers}; from peers {fromPeers}; {dropped} dropped")
    return ConsoleText("\n".join(text))


def _pair(key: Any, separator: str) -> str:
    # A pair of names, as a tuple or already joined by "/" (in JSON).
    if isinstance(key, tuple):
        return separator.join(map(str, key))
    return str(key).replace("/", separator)


def revocationText(record: Dict[str, Any]) -> ConsoleText:
    """
    How L{AdminConsole.revoke} and L{AdminConsole.unrevoke} show what they
    did (L{AdminConsole.revocationRecord}).
    """
    username = record["username"]
    if not record["revoked"]:
        if not record["changed"]:
            return ConsoleText(f"{username!r} was not revoked; nothing changed")
        return ConsoleText(f"{username!r} is no longer revoked: let in again on every node")
    ended = record["ended"]
    return ConsoleText(
        f"{username!r} revoked on every node"
        + ("" if record["changed"] else " (it already was)")
        + f"; {ended} allocation{'s' if ended != 1 else ''} ended here, "
        "the other nodes' within a second"
    )


def credentialText(record: Dict[str, Any]) -> ConsoleText:
    """
    How L{AdminConsole.mint} shows a credential L{AdminConsole.mintRecord}
    made (the control command shows it so too).
    """
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["expires"]))
    return ConsoleText(
        f"username: {record['username']}\npassword: {record['password']}\n"
        f"realm:    {record['realm']}\nvalid for {_duration(record['valid'])}, until {until}"
    )


def _signature(function: Callable[..., Any]) -> str:
    """
    C{function}'s parameters as the operator types them: no annotations.
    """
    signature = inspect.signature(function)
    parameters = [
        parameter.replace(annotation=inspect.Parameter.empty)
        for parameter in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=inspect.Signature.empty))


def _summary(function: Callable[..., Any]) -> str:
    """
    The first paragraph of C{function}'s docstring, on one line.
    """
    doc = inspect.getdoc(function) or ""
    paragraph = " ".join(doc.split("\n\n")[0].split()).rstrip(".")
    return _EPYTEXT_MARKUP.sub(r"\1", paragraph)


def _duration(seconds: float) -> str:
    """
    C{seconds} the way people read them: C{45s}, C{12m05s}, C{3h02m}, C{2d04h}.
    """
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _size(count: int) -> str:
    """
    A byte count: exact below 10,000 bytes, then in kB, MB, GB (powers of 1000).
    """
    if count < 10_000:
        return f"{count} B"
    value = float(count)
    units = ("kB", "MB", "GB", "TB")
    for unit in units:
        value /= 1000
        if value < 1000 or unit == units[-1]:
            break
    return f"{value:.1f} {unit}"


def _traffic(packets: int, octets: int) -> str:
    return f"{packets} pkt{'s' if packets != 1 else ''}, {_size(octets)}"


def _counts(counts: Dict[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items()))


def _describeFilter(user: Optional[str], address: Any, verb: str = "") -> str:
    parts = []
    if user is not None:
        parts.append(f"user={user!r}")
    if address is not None:
        parts.append(f"address={str(address)!r}")
    return (verb + " " + " and ".join(parts)) if parts else ""


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], rightAligned: set[int]) -> str:
    """
    Align C{rows} under C{header}, two spaces between columns.
    """
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = [
            cell.rjust(width) if i in rightAligned else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join(line(cells) for cells in (header, *rows))


def allocationsText(
    records: Sequence[Dict[str, Any]], total: int, user: Optional[str], address: Any
) -> ConsoleText:
    """
    The table L{AdminConsole.allocations} shows, from the allocations'
    records (L{AdminConsole.allocationRecord}; the control process of
    workers gathers them from every worker).

    @param total: how many allocations there are, matching or not.
    """
    if not records:
        if user is None and address is None:
            return ConsoleText("no allocations")
        return ConsoleText(f"no allocation matches{_describeFilter(user, address)}")
    header = (
        "USER",
        "CLIENT",
        "TRANSPORT",
        "RELAYED",
        "AGE",
        "LEFT",
        "PERMS",
        "CHANNELS",
        "TO PEERS",
        "FROM PEERS",
        "DROPPED",
    )
    rows = [_recordRow(record) for record in records]
    table = _table(header, rows, rightAligned={4, 5, 6, 7, 10})
    count = f"{len(rows)} allocation{'s' if len(rows) != 1 else ''}"
    if len(rows) != total:
        count += f" of {total}{_describeFilter(user, address, ' matching')}"
    return ConsoleText(f"{table}\n{count}")


def _recordRow(record: Dict[str, Any]) -> List[str]:
    transport = record["transport"] + (", tcp relay" if record["tcpRelay"] else "")
    return [
        record["user"],
        f"{record['client']}->{record['server']}",
        transport,
        ", ".join(record["relayed"]),
        _duration(record["age"]),
        _duration(record["lifetime"]),
        str(record["permissions"]),
        str(record["channels"]),
        _traffic(record["packetsToPeer"], record["bytesToPeer"]),
        _traffic(record["packetsFromPeer"], record["bytesFromPeer"]),
        str(record["dropped"]),
    ]


# Addresses -----------------------------------------------------------------


def _canonicalAddress(text: str) -> str:
    """
    C{"ip"} or C{"ip:port"} (C{"[ip6]:port"}) in the spelling
    L{TransportAddress} uses, so that C{2001:DB8::1} finds C{2001:db8::1}.
    Text that is not an address comes back stripped.
    """
    text = text.strip()
    try:
        return str(ip_address(text.strip("[]")))
    except ValueError:
        pass
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    try:
        return str(TransportAddress(str(ip_address(host)), int(port)))
    except ValueError:
        return text


def _addressesOf(allocation: Allocation) -> set[str]:
    """
    Every address text that finds C{allocation}: its client's, its relayed
    ones and its peers', each as C{ip:port} and as C{ip}.
    """
    addresses: List[TransportAddress] = [allocation.fiveTuple.clientAddress]
    addresses += allocation.relayedAddresses
    addresses += allocation.channelsByPeer
    for connection in allocation.peerConnections.values():
        peer = getattr(connection, "peer", None)
        if isinstance(peer, TransportAddress):
            addresses.append(peer)
    found = set(allocation.permissions)
    for address in addresses:
        found.add(str(address))
        found.add(address.host)
    return found
